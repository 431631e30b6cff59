// Hostile ONNX files: every way a model file can be broken must end in a perch::Error that names the file
// (and the node / tensor concerned), never a crash, a hang or a huge allocation.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <functional>
#include <random>
#include <string>

#include "perch/core/error.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace perch;
using namespace perch::graph;

namespace {

// The message of the perch::Error `f` throws; fails the test if it throws nothing or something else.
using perch::test::expect_contains;
using perch::test::perch_error;

onnx::ModelProto tiny_proto() {
  onnx::ModelProto mp;
  EXPECT_TRUE(mp.ParseFromString(model_to_bytes(perch::test::tiny_cnn(5))));
  return mp;
}

onnx::TensorProto* initializer(onnx::ModelProto& mp, const std::string& name) {
  for (auto& t : *mp.mutable_graph()->mutable_initializer())
    if (t.name() == name) return &t;
  ADD_FAILURE() << "no initializer " << name;
  return nullptr;
}

// Loading `bytes` either succeeds (a prefix or a mutation may still be a valid protobuf) and then the
// executor either accepts the model or refuses it with a perch::Error — or the load throws a perch::Error
// naming `what`. Anything else (another exception type, a crash under the sanitizers) is a bug.
void load_or_refuse(const std::string& bytes, const std::string& what) {
  try {
    Model m = model_from_bytes(bytes, what);
    try {
      runtime::Executor exec(std::move(m));
    } catch (const Error&) {
    }
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(what + ": ", 0), 0u) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": non-perch exception " << e.what();
  }
}

TEST(OnnxRobustness, EveryTruncationIsRefusedOrHarmless) {
  const std::string bytes = model_to_bytes(perch::test::tiny_cnn(5));
  ASSERT_GT(bytes.size(), 100u);
  int refused = 0;
  for (size_t keep = 0; keep < bytes.size(); ++keep) {
    const std::string what = "cut_" + std::to_string(keep) + ".onnx";
    try {
      (void)model_from_bytes(bytes.substr(0, keep), what);
    } catch (const Error& e) {
      ++refused;
      EXPECT_EQ(std::string(e.what()).rfind(what + ": ", 0), 0u) << e.what();
      continue;
    }
    load_or_refuse(bytes.substr(0, keep), what);
  }
  // Almost every prefix cuts a field or drops the graph's nodes; most must be refused outright.
  EXPECT_GT(refused, static_cast<int>(bytes.size() / 2));
}

TEST(OnnxRobustness, RandomByteCorruptionNeverCrashes) {
  const std::string bytes = model_to_bytes(perch::test::tiny_cnn(5));
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string b = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) b[rng() % b.size()] = static_cast<char>(rng() & 0xff);
    load_or_refuse(b, "mutant_" + std::to_string(iter) + ".onnx");
  }
}

TEST(OnnxRobustness, MissingInitializerNamesNodeAndInput) {
  onnx::ModelProto mp = tiny_proto();
  auto* inits = mp.mutable_graph()->mutable_initializer();
  for (int i = 0; i < inits->size(); ++i)
    if (inits->Get(i).name() == "w2") {
      inits->DeleteSubrange(i, 1);
      break;
    }
  const std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "no_w2.onnx"); });
  expect_contains(e, {"no_w2.onnx: ", "'w2'", "Conv_c2"});
}

TEST(OnnxRobustness, NodeWithoutOutputsIsRefusedNamingIt) {
  // fuzz_int8_lower's finding 7: a MaxPool declaring no output reached a kernel that read outputs[1].
  onnx::ModelProto mp = tiny_proto();
  for (auto& n : *mp.mutable_graph()->mutable_node())
    if (n.op_type() == "MaxPool") n.clear_output();
  const std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "mute.onnx"); });
  expect_contains(e, {"mute.onnx: ", "MaxPool_p1", "no outputs"});
}

TEST(OnnxRobustness, CyclicGraphNamesANodeOnTheCycle) {
  onnx::ModelProto mp = tiny_proto();
  // Relu_r1 reads the Add's output instead of c1: r1 -> p1 -> c2 -> r2 -> a -> r1.
  for (auto& n : *mp.mutable_graph()->mutable_node())
    if (n.output(0) == "r1") n.set_input(0, "a");
  const std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "cycle.onnx"); });
  expect_contains(e, {"cycle.onnx: ", "cycle"});
  bool names_one = false;
  for (const char* n : {"Relu_r1", "MaxPool_p1", "Conv_c2", "Clip_r2", "Add_a"}) names_one |= e.find(n) != std::string::npos;
  EXPECT_TRUE(names_one) << e;
}

TEST(OnnxRobustness, UnsupportedOpsetIsRefusedNamingTheOpset) {
  onnx::ModelProto mp = tiny_proto();
  for (auto& o : *mp.mutable_opset_import())
    if (o.domain().empty()) o.set_version(runtime::kMaxOpset + 7);
  Model m = model_from_bytes(mp.SerializeAsString(), "future.onnx");  // loading is fine: the IR is opset-neutral
  const std::string e = perch_error([&] { runtime::Executor exec(m); });
  expect_contains(e, {"future.onnx: ", "opset " + std::to_string(runtime::kMaxOpset + 7), "not supported"});
}

TEST(OnnxRobustness, DimsWhoseProductOverflowsInt64AreRefused) {
  onnx::ModelProto mp = tiny_proto();
  auto* w = initializer(mp, "w1");
  w->clear_dims();
  for (int64_t d : {int64_t{1} << 31, int64_t{1} << 31, int64_t{1} << 31, int64_t{8}}) w->add_dims(d);  // 2^96 elements
  std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "overflow.onnx"); });
  expect_contains(e, {"overflow.onnx: ", "'w1'", "refused before allocation"});

  w->clear_dims();
  for (int64_t d : {int64_t{8}, int64_t{-1}, int64_t{3}, int64_t{3}}) w->add_dims(d);
  e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "negative.onnx"); });
  expect_contains(e, {"negative.onnx: ", "'w1'", "negative"});
}

TEST(OnnxRobustness, HugeInitializerIsRefusedBeforeAllocation) {
  // 2^40 elements (4 TiB of float) declared by a few bytes of dims: above kMaxElements.
  onnx::ModelProto mp = tiny_proto();
  auto* w = initializer(mp, "w1");
  w->clear_dims();
  w->add_dims(int64_t{1} << 40);
  std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "huge.onnx"); });
  expect_contains(e, {"huge.onnx: ", "'w1'", "refused before allocation"});

  // 2^33 elements (32 GiB) is under kMaxElements, but the file holds none of its bytes: refused by
  // comparing the declared size with the data present, before allocating (raw_data and typed fields).
  w->clear_dims();
  w->add_dims(int64_t{1} << 33);
  e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "hollow.onnx"); });
  expect_contains(e, {"hollow.onnx: ", "'w1'", "raw_data has"});
  w->clear_raw_data();
  w->add_float_data(1.0f);
  e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "hollow2.onnx"); });
  expect_contains(e, {"hollow2.onnx: ", "'w1'", "holds 1 values", "8589934592"});
}

TEST(OnnxRobustness, ExternalDataIsRefusedWhereverItPoints) {
  // perch reads no external data at all, so a location escaping the model's folder can never be opened;
  // the refusal names the file, the tensor and the reason.
  for (const std::string loc : {"../../../../etc/passwd", "/etc/shadow", "weights.bin"}) {
    onnx::ModelProto mp = tiny_proto();
    auto* w = initializer(mp, "w3");
    w->clear_raw_data();
    w->set_data_location(onnx::TensorProto::EXTERNAL);
    auto* kv = w->add_external_data();
    kv->set_key("location");
    kv->set_value(loc);
    const std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "ext.onnx"); });
    expect_contains(e, {"ext.onnx: ", "'w3'", "external data"});
  }
}

TEST(OnnxRobustness, UnknownElementTypeAndBadAttributeAreNamed) {
  onnx::ModelProto mp = tiny_proto();
  initializer(mp, "b1")->set_data_type(9999);
  std::string e = perch_error([&] { (void)model_from_bytes(mp.SerializeAsString(), "dtype.onnx"); });
  expect_contains(e, {"dtype.onnx: ", "'b1'", "9999"});
}

}  // namespace
