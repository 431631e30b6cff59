#include "perch/core/file_io.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <random>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "perch/core/error.h"

namespace perch {

namespace {

std::string os_error(int err) { return std::strerror(err); }

// Closes and unlinks the temporary file unless released (on success, after the rename).
struct TempFile {
  std::string path;
  int fd = -1;
  bool keep = false;
  ~TempFile() {
    if (fd >= 0) ::close(fd);
    if (!keep && !path.empty()) ::unlink(path.c_str());
  }
};

// Temporary names are ".<target name>.tmp.<pid>.<counter>.<salt>". A process killed between creating
// one and renaming it (SIGKILL, power loss) leaves it behind; the next write of the same target removes
// those whose pid no longer runs. A live pid (ours, another perch's, or a reused one) is left alone.
void remove_stale_temporaries(const std::filesystem::path& dir, const std::string& target_name) {
  const std::string prefix = "." + target_name + ".tmp.";
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const size_t dot = name.find('.', prefix.size());
    if (dot == std::string::npos || dot == prefix.size()) continue;
    long long pid = 0;
    bool digits = true;
    for (size_t i = prefix.size(); i < dot && digits; ++i) {
      digits = name[i] >= '0' && name[i] <= '9';
      pid = pid * 10 + (name[i] - '0');
      if (pid > (1LL << 31)) digits = false;
    }
    if (!digits || pid <= 0) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // still running (or not ours)
    std::error_code rm;
    std::filesystem::remove(it->path(), rm);  // best effort: a failure here must not fail the write
  }
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  PERCH_CHECK(!path.empty(), "write_file_atomic: empty output path");
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
  std::error_code ec;
  PERCH_CHECK(std::filesystem::is_directory(dir, ec), path.string(), ": cannot write: folder ", dir.string(),
              " does not exist");

  remove_stale_temporaries(dir, path.filename().string());

  // A unique hidden name next to the target; O_EXCL guarantees we never clobber someone else's file, and
  // mode 0666 lets the umask decide permissions as for any new file (mkstemp would force 0600).
  static std::atomic<uint64_t> counter{0};
  TempFile tmp;
  for (int attempt = 0; attempt < 100 && tmp.fd < 0; ++attempt) {
    const uint64_t salt = std::random_device{}();
    std::string name(1, '.');  // (appends, not operator+: GCC 12 warns falsely on "." + string)
    name.append(path.filename().string()).append(".tmp.").append(std::to_string(::getpid()));
    name.append(".").append(std::to_string(counter.fetch_add(1))).append(".").append(std::to_string(salt % 1000000));
    std::string candidate = (dir / name).string();
    tmp.fd = ::open(candidate.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (tmp.fd >= 0) {
      tmp.path = candidate;
    } else if (errno != EEXIST) {
      PERCH_FAIL(path.string(), ": cannot create temporary file ", candidate, ": ", os_error(errno));
    }
  }
  PERCH_CHECK(tmp.fd >= 0, path.string(), ": cannot create a unique temporary file in ", dir.string());

  const char* p = bytes.data();
  size_t left = bytes.size();
  while (left > 0) {
    ssize_t n = ::write(tmp.fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    PERCH_CHECK(n > 0, path.string(), ": write to temporary file ", tmp.path, " failed after ",
                bytes.size() - left, " of ", bytes.size(), " bytes: ", os_error(n < 0 ? errno : EIO));
    p += n;
    left -= static_cast<size_t>(n);
  }
  int rc = ::close(tmp.fd);
  tmp.fd = -1;
  PERCH_CHECK(rc == 0, path.string(), ": closing temporary file ", tmp.path, " failed: ", os_error(errno));
  PERCH_CHECK(::rename(tmp.path.c_str(), path.c_str()) == 0, path.string(), ": cannot rename temporary file ",
              tmp.path, " into place: ", os_error(errno));
  tmp.keep = true;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  PERCH_CHECK(in, path.string(), ": cannot open for reading: ", os_error(errno));
  std::ostringstream os;
  os << in.rdbuf();
  PERCH_CHECK(!in.bad(), path.string(), ": read failed");
  return os.str();
}

}  // namespace perch
