// The perch command line given bad inputs (clear errors naming what is wrong, or documented fallbacks),
// killed mid-run (never a partial output), and run twice (bit-identical output across runs and thread
// counts).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <thread>

#include "perch/core/file_io.h"
#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "test_util.h"

extern char** environ;

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace perch;

namespace {

struct Ran {
  int code = -1;
  std::string out, err;
};

std::string shq(const std::string& s) { return "'" + s + "'"; }
std::string shq(const fs::path& p) { return shq(p.string()); }
std::string perch_exe() { return shq(test::binary_dir() / "perch"); }

Ran sh(const std::string& cmd, const fs::path& dir) {
  const fs::path err_file = dir / "stderr.txt";
  Ran r;
  FILE* p = ::popen((cmd + " 2>" + shq(err_file)).c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = read_file(err_file);
  fs::remove(err_file);
  return r;
}

fs::path fresh_dir(const std::string& name) {
  fs::path d = test::binary_dir() / "test_scratch" / ("robust_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Tensor random_images(int64_t n, uint32_t seed, Shape tail = {1, 8, 8}) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 2.0f);
  Shape s{n};
  s.insert(s.end(), tail.begin(), tail.end());
  Tensor x(DType::kFloat32, s);
  for (auto& v : x.span<float>()) v = u(rng);
  return x;
}

Tensor labels(int64_t n) {
  Tensor l(DType::kInt64, {n});
  for (int64_t i = 0; i < n; ++i) l.data<int64_t>()[i] = i % 3;
  return l;
}

void expect_contains(const std::string& s, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(s.find(p), std::string::npos) << "missing '" << p << "' in: " << s;
}

// ---- bad inputs --------------------------------------------------------------------------------------

TEST(CliRobustness, CalibrationSetSmallerThanRequestedWarnsAndUsesAll) {
  const fs::path d = fresh_dir("small_calib");
  graph::save_model(test::tiny_cnn(1), d / "m.onnx");
  write_npy(d / "x.npy", random_images(40, 2));
  const std::string base = perch_exe() + " quantize " + shq(d / "m.onnx") + " -o " + shq(d / "q.onnx") +
                           " --calib npy:" + shq(d / "x.npy") + " --calib-count 1000";
  Ran r = sh(base, d);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_contains(r.err, {"warning", "40 images", "--calib-count 1000", "using all"});
  r = sh(base + " --json", d);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["calibration"]["images"], 40);
}

TEST(CliRobustness, LabelImageCountMismatchNamesBothCounts) {
  const fs::path d = fresh_dir("label_mismatch");
  graph::save_model(test::tiny_cnn(1), d / "m.onnx");
  write_npy(d / "x.npy", random_images(20, 2));
  write_npy(d / "l.npy", labels(19));
  const Ran r = sh(perch_exe() + " eval " + shq(d / "m.onnx") + " --data " +
                       shq("npy:" + (d / "x.npy").string() + "," + (d / "l.npy").string()),
                   d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"20", "19", "l.npy"});
}

TEST(CliRobustness, WrongInputShapeOrDtypeAtEvalAndRunNamesTheInput) {
  const fs::path d = fresh_dir("wrong_input");
  graph::save_model(test::tiny_cnn(1), d / "m.onnx");
  write_npy(d / "x9.npy", random_images(4, 2, {1, 9, 9}));
  write_npy(d / "x3.npy", random_images(4, 2, {3, 8, 8}));
  write_npy(d / "l.npy", labels(4));
  Tensor xi(DType::kInt32, {4, 1, 8, 8});
  write_npy(d / "xi.npy", xi);

  for (const char* f : {"x9.npy", "x3.npy"}) {
    const Ran r = sh(perch_exe() + " eval " + shq(d / "m.onnx") + " --data " +
                         shq("npy:" + (d / f).string() + "," + (d / "l.npy").string()),
                     d);
    EXPECT_EQ(r.code, 1) << f;
    expect_contains(r.err, {"m.onnx", "input 'x'", "[-1,1,8,8]"});
  }
  Ran r = sh(perch_exe() + " run " + shq(d / "m.onnx") + " --input x=" + shq(d / "x9.npy") + " -o " + shq(d / "o"), d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"input 'x'", "[4,1,9,9]"});
  r = sh(perch_exe() + " run " + shq(d / "m.onnx") + " --input x=" + shq(d / "xi.npy") + " -o " + shq(d / "o"), d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"'x'", "int32"});
  r = sh(perch_exe() + " run " + shq(d / "m.onnx") + " --input nosuch=" + shq(d / "x9.npy") + " -o " + shq(d / "o"), d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"nosuch"});
}

TEST(CliRobustness, NonFiniteWeightsAreRefusedNamingTensorAndIndex) {
  const fs::path d = fresh_dir("nan_weights");
  graph::Model m = test::tiny_cnn(1);
  m.graph.initializers["w2"].data<float>()[3 * 9 + 8] = std::numeric_limits<float>::quiet_NaN();
  graph::save_model(m, d / "m.onnx");
  write_npy(d / "x.npy", random_images(16, 2));
  {
    std::ofstream(d / "q.onnx") << "previous";
  }
  const Ran r = sh(perch_exe() + " quantize " + shq(d / "m.onnx") + " -o " + shq(d / "q.onnx") + " --calib npy:" +
                       shq(d / "x.npy"),
                   d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"m.onnx", "Conv node 'Conv_c2'", "'w2'", "non-finite", "[3,0,2,2]"});
  EXPECT_EQ(read_file(d / "q.onnx"), "previous");
}

TEST(CliRobustness, NonFiniteCalibrationDataFailsByDefaultAndIsCountedWhenIgnored) {
  const fs::path d = fresh_dir("nan_calib");
  graph::save_model(test::tiny_cnn(1), d / "m.onnx");
  Tensor x = random_images(32, 2);
  x.data<float>()[5 * 64 + 7] = std::numeric_limits<float>::quiet_NaN();
  x.data<float>()[9 * 64] = -std::numeric_limits<float>::infinity();
  write_npy(d / "x.npy", x);
  const std::string base = perch_exe() + " quantize " + shq(d / "m.onnx") + " -o " + shq(d / "q.onnx") +
                           " --calib npy:" + shq(d / "x.npy");
  Ran r = sh(base, d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"activation 'x'", "non-finite", "x.npy"});
  EXPECT_FALSE(fs::exists(d / "q.onnx"));
  r = sh(base + " --ignore-nonfinite --json", d);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_GE(json::parse(r.out)["nonfinite_values_skipped"].get<int64_t>(), 2);
  r = sh(base + " --ignore-nonfinite", d);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_contains(r.err, {"warning", "NaN/Inf", "skipped"});
}

TEST(CliRobustness, UnsupportedOpsetIsRefusedByEvalAndQuantize) {
  const fs::path d = fresh_dir("opset");
  graph::Model m = test::tiny_cnn(1);
  m.set_opset(99);
  graph::save_model(m, d / "future.onnx");
  write_npy(d / "x.npy", random_images(4, 2));
  write_npy(d / "l.npy", labels(4));
  Ran r = sh(perch_exe() + " eval " + shq(d / "future.onnx") + " --data " +
                 shq("npy:" + (d / "x.npy").string() + "," + (d / "l.npy").string()),
             d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"future.onnx", "opset 99", "not supported"});
  r = sh(perch_exe() + " quantize " + shq(d / "future.onnx") + " -o " + shq(d / "q.onnx") + " --calib npy:" +
             shq(d / "x.npy"),
         d);
  EXPECT_EQ(r.code, 1);
  expect_contains(r.err, {"future.onnx", "opset 99"});
  EXPECT_FALSE(fs::exists(d / "q.onnx"));
}

// All-zero and constant weight channels and an int32-overflowing bias: the model quantizes (bias clamped,
// counted in JSON layers[].bias_clamped), runs in perch, and loads and runs in ONNX Runtime.
TEST(CliRobustness, DegenerateChannelsAndHugeBiasQuantizeAndRunInOrt) {
  const fs::path ort = test::source_dir() / "tools" / "ort";
  ASSERT_TRUE(fs::exists(ort / "node_modules" / "onnxruntime-node")) << "run scripts/setup.sh";
  const fs::path d = fresh_dir("degenerate");
  graph::Model m = test::tiny_cnn(4);
  float* w1 = m.graph.initializers["w1"].data<float>();
  for (int k = 0; k < 9; ++k) w1[k] = 0.0f;               // channel 0: all zero
  for (int k = 0; k < 9; ++k) w1[9 + k] = -0.125f;        // channel 1: constant
  m.graph.initializers["b1"].data<float>()[2] = 3.0e30f;  // int32 overflow at any sane scale
  graph::save_model(m, d / "m.onnx");
  write_npy(d / "x.npy", random_images(64, 3));
  Ran r = sh(perch_exe() + " quantize " + shq(d / "m.onnx") + " -o " + shq(d / "q.onnx") + " --calib npy:" +
                 shq(d / "x.npy") + " --no-bias-correction --no-equalize --json",
             d);
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  ASSERT_FALSE(j["layers"].empty());
  EXPECT_EQ(j["layers"][0]["node"], "Conv_c1");
  EXPECT_EQ(j["layers"][0]["bias_clamped"], 1);
  r = sh(perch_exe() + " quantize " + shq(d / "m.onnx") + " -o " + shq(d / "q2.onnx") + " --calib npy:" +
             shq(d / "x.npy") + " --no-bias-correction --no-equalize",
         d);
  ASSERT_EQ(r.code, 0) << r.err;
  expect_contains(r.err, {"warning", "Conv_c1", "clamped"});

  r = sh(perch_exe() + " run " + shq(d / "q.onnx") + " --input x=" + shq(d / "x.npy") + " -o " + shq(d / "p") + " -q", d);
  ASSERT_EQ(r.code, 0) << r.err;
  r = sh("node " + shq(ort / "run.js") + " --level exact " + shq(d / "q.onnx") + " --input x=" + shq(d / "x.npy") + " -o " +
             shq(d / "o"),
         d);
  ASSERT_EQ(r.code, 0) << "ONNX Runtime rejected the model: " << r.err;
  for (const fs::path& f : {d / "p" / "y.npy", d / "o" / "y.npy"}) {
    const Tensor y = read_npy(f);
    for (float v : y.span<float>()) EXPECT_TRUE(std::isfinite(v)) << f;
  }
}

// ---- nothing lost ------------------------------------------------------------------------------------

pid_t spawn_quiet(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_store(extra_env);
  for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  return rc == 0 ? pid : -1;
}

int wait_exit(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

bool is_own_temporary(const std::string& name, const std::string& target) {
  return name.rfind("." + target + ".tmp.", 0) == 0;
}

TEST(CliRobustness, SigkillDuringQuantizeLeavesOldOutputOrCompleteNewOne) {
  const fs::path d = fresh_dir("sigkill");
  graph::save_model(test::tiny_cnn(6), d / "m.onnx");
  write_npy(d / "x.npy", random_images(16384, 7));
  const std::vector<std::string> cmd = {(test::binary_dir() / "perch").string(), "quantize", (d / "m.onnx").string(),
                                        "-o", (d / "out.onnx").string(), "--calib", "npy:" + (d / "x.npy").string(),
                                        "--calib-count", "16384", "--quiet"};
  const std::string previous = "previous model bytes";

  // A complete run: how long quantize takes, and the bytes a finished run writes (runs are deterministic).
  write_file_atomic(d / "out.onnx", previous);
  const auto t0 = std::chrono::steady_clock::now();
  pid_t pid = spawn_quiet(cmd);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(wait_exit(pid), 0);
  const double full = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string finished = read_file(d / "out.onnx");
  ASSERT_NE(finished, previous);
  EXPECT_NO_THROW((void)graph::model_from_bytes(finished, "finished"));

  int killed = 0, old_kept = 0, new_complete = 0;
  for (double frac : {0.02, 0.1, 0.25, 0.4, 0.55, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0}) {
    write_file_atomic(d / "out.onnx", previous);
    pid = spawn_quiet(cmd);
    ASSERT_GT(pid, 0);
    std::this_thread::sleep_for(std::chrono::duration<double>(frac * full));
    killed += ::kill(pid, SIGKILL) == 0;
    wait_exit(pid);
    const std::string now = read_file(d / "out.onnx");
    if (now == previous) {
      ++old_kept;
    } else {
      ++new_complete;
      EXPECT_EQ(now, finished) << "killed at " << frac << " of the run: out.onnx is neither the old nor a complete file";
    }
    for (const auto& e : fs::directory_iterator(d)) {
      const std::string name = e.path().filename().string();
      EXPECT_TRUE(name == "m.onnx" || name == "x.npy" || name == "out.onnx" || is_own_temporary(name, "out.onnx"))
          << "unexpected file after kill: " << name;
    }
  }
  EXPECT_GT(killed, 0);
  EXPECT_GT(old_kept, 0) << "no kill landed during the run (full run " << full << " s)";
  std::printf("[ info ] full run %.2f s; %d kills: old output kept %d, complete new output %d\n", full, killed,
              old_kept, new_complete);

  // A leftover temporary of a killed run is removed by the next write to the same output.
  write_file_atomic(d / ".out.onnx.tmp.999999999.0.1", "stale");  // pid 999999999 cannot exist (> pid_max)
  pid = spawn_quiet(cmd);
  ASSERT_EQ(wait_exit(pid), 0);
  EXPECT_EQ(read_file(d / "out.onnx"), finished);
  for (const auto& e : fs::directory_iterator(d))
    EXPECT_FALSE(is_own_temporary(e.path().filename().string(), "out.onnx")) << "stale temporary kept: " << e.path();
}

// ---- determinism -------------------------------------------------------------------------------------

TEST(CliRobustness, QuantizeIsBitIdenticalAcrossRunsAndThreadCounts) {
  const fs::path d = fresh_dir("determinism");
  graph::save_model(test::tiny_cnn(8), d / "m.onnx");
  write_npy(d / "x.npy", random_images(300, 9));
  for (const std::string flags : {"", "--weights per-tensor --act-estimator percentile", "--weights per-group:4 --act-estimator mse"}) {
    SCOPED_TRACE(flags);
    std::vector<std::string> outputs;
    for (const char* threads : {"1", "2", "2", "1"}) {
      const fs::path out = d / ("q_" + std::to_string(outputs.size()) + ".onnx");
      const Ran r = sh(std::string("PERCH_NUM_THREADS=") + threads + " " + perch_exe() + " quantize " + shq(d / "m.onnx") +
                           " -o " + shq(out) + " --calib npy:" + shq(d / "x.npy") + " --calib-count 200 " + flags,
                       d);
      ASSERT_EQ(r.code, 0) << r.err;
      outputs.push_back(read_file(out));
    }
    ASSERT_FALSE(outputs[0].empty());
    for (size_t i = 1; i < outputs.size(); ++i) EXPECT_TRUE(outputs[i] == outputs[0]) << "run " << i << " differs";
  }
}

}  // namespace
