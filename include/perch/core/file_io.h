// perch/core/file_io.h — whole-file reads and atomic whole-file writes.
//
// write_file_atomic writes `bytes` to a temporary file in the same folder as `path` and renames it over
// `path`, so a reader never sees a half-written file (rename(2) is atomic within one file system). It does
// not fsync: a crash may lose the new file, but never leaves a torn one under `path`. The temporary file is
// removed if anything fails. Errors throw perch::Error naming the path and the OS reason.
//
// Temporary files are named ".<name>.tmp.<pid>.<n>.<salt>" (hidden, next to <name>). If the process is
// killed before the rename, that file stays behind; the next write_file_atomic of the same <name> deletes
// every such file whose <pid> is no longer running.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

namespace perch {

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// Reads a whole (uncompressed) file; throws naming the path if it cannot be opened or read.
std::string read_file(const std::filesystem::path& path);

}  // namespace perch
