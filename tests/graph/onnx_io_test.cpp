// ONNX protobuf I/O: round trips (load -> model_to_bytes -> model_from_bytes) on the shared models and on
// every model.onnx of ONNX's node tests, checked twice — against the re-loaded IR (every field, initializers
// bit for bit) and against the original file parsed directly with onnx::ModelProto (so a field that load
// drops consistently cannot hide); atomic saves; and the error messages for files perch refuses.
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "graph_test_util.h"
#include "perch/core/file_io.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/executor.h"
#include "test_util.h"

namespace perch::graph {
namespace {

namespace fs = std::filesystem;
using test::expect_same_model;
using test::make_node;
using test::make_value;

// A fresh empty folder under the system temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    const auto* info = testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("perch_graph_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::vector<std::string> listing() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(path_)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }

 private:
  fs::path path_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-perch exception: " << e.what();
    return e.what();
  }
  return "";
}

// ---- independent comparison against the original protobuf -------------------------------------------

template <typename Field>
bool values_equal(const Field& f, const Tensor& t) {
  if (static_cast<int64_t>(f.size()) != t.numel()) return false;
  const Tensor v = t.reshaped({t.numel()});
  for (int64_t i = 0; i < t.numel(); ++i) {
    const auto want = f.Get(static_cast<int>(i));
    switch (t.dtype()) {
      case DType::kFloat32: {
        const float w = static_cast<float>(want), g = v.data<float>()[i];
        if (std::memcmp(&w, &g, sizeof w) != 0) return false;
        break;
      }
      case DType::kFloat64: {
        const double w = static_cast<double>(want), g = v.data<double>()[i];
        if (std::memcmp(&w, &g, sizeof w) != 0) return false;
        break;
      }
      case DType::kBool:
        if ((want != 0) != v.data<bool>()[i]) return false;
        break;
      default:
        if (static_cast<int64_t>(want) != v.to_i64_vector()[static_cast<size_t>(i)]) return false;
    }
  }
  return true;
}

// The perch tensor holds exactly what the TensorProto says (dims; raw bytes, or the typed field's values).
::testing::AssertionResult matches_proto(const onnx::TensorProto& p, const Tensor& t) {
  Shape dims(p.dims().begin(), p.dims().end());
  if (dims != t.shape())
    return ::testing::AssertionFailure() << "dims " << shape_str(dims) << " vs " << shape_str(t.shape());
  if (p.has_raw_data()) {
    if (p.raw_data().size() != t.nbytes() || (t.nbytes() && std::memcmp(p.raw_data().data(), t.raw(), t.nbytes()) != 0))
      return ::testing::AssertionFailure() << "raw_data differs";
    return ::testing::AssertionSuccess();
  }
  bool ok = false;
  switch (p.data_type()) {
    case onnx::TensorProto::FLOAT: ok = values_equal(p.float_data(), t); break;
    case onnx::TensorProto::DOUBLE: ok = values_equal(p.double_data(), t); break;
    case onnx::TensorProto::INT64: ok = values_equal(p.int64_data(), t); break;
    default: ok = values_equal(p.int32_data(), t); break;
  }
  return ok ? ::testing::AssertionSuccess() : ::testing::AssertionFailure() << "typed values differ";
}

void expect_matches_proto(const onnx::ModelProto& mp, const Model& m, const std::string& what) {
  const auto& gp = mp.graph();
  EXPECT_EQ(m.ir_version, mp.ir_version()) << what;
  EXPECT_EQ(m.graph.name, gp.name()) << what;
  ASSERT_EQ(m.graph.nodes.size(), static_cast<size_t>(gp.node_size())) << what;
  // Node test models are written in topological order, so load's stable toposort keeps the file's order.
  for (int i = 0; i < gp.node_size(); ++i) {
    const auto& np = gp.node(i);
    const Node& n = m.graph.nodes[static_cast<size_t>(i)];
    const std::string w = what + ": node " + std::to_string(i) + " (" + np.op_type() + ")";
    EXPECT_EQ(n.op_type, np.op_type()) << w;
    EXPECT_EQ(n.name, np.name()) << w;
    // the ONNX inputs; values a subgraph reads from outside follow them (Node::captured)
    EXPECT_EQ(std::vector<std::string>(n.inputs.begin(), n.inputs.begin() + static_cast<std::ptrdiff_t>(n.formal_input_count())),
              std::vector<std::string>(np.input().begin(), np.input().end()))
        << w;
    EXPECT_EQ(n.outputs, std::vector<std::string>(np.output().begin(), np.output().end())) << w;
    ASSERT_EQ(n.attrs.size(), static_cast<size_t>(np.attribute_size())) << w;
    for (const auto& ap : np.attribute()) {
      auto it = n.attrs.find(ap.name());
      ASSERT_NE(it, n.attrs.end()) << w << " lost attribute " << ap.name();
      const AttrValue& v = it->second;
      switch (ap.type()) {
        case onnx::AttributeProto::INT: EXPECT_EQ(std::get<int64_t>(v), ap.i()) << w << " " << ap.name(); break;
        case onnx::AttributeProto::FLOAT: {
          const float f = ap.f(), g = std::get<float>(v);
          EXPECT_EQ(0, std::memcmp(&f, &g, sizeof f)) << w << " " << ap.name();
          break;
        }
        case onnx::AttributeProto::STRING: EXPECT_EQ(std::get<std::string>(v), ap.s()) << w; break;
        case onnx::AttributeProto::INTS:
          EXPECT_EQ(std::get<std::vector<int64_t>>(v), std::vector<int64_t>(ap.ints().begin(), ap.ints().end())) << w;
          break;
        case onnx::AttributeProto::FLOATS: {
          const auto& g = std::get<std::vector<float>>(v);
          ASSERT_EQ(g.size(), static_cast<size_t>(ap.floats_size())) << w;
          for (int j = 0; j < ap.floats_size(); ++j) {
            const float f = ap.floats(j);
            EXPECT_EQ(0, std::memcmp(&f, &g[static_cast<size_t>(j)], sizeof f)) << w << " " << ap.name() << "[" << j << "]";
          }
          break;
        }
        case onnx::AttributeProto::STRINGS:
          EXPECT_EQ(std::get<std::vector<std::string>>(v), std::vector<std::string>(ap.strings().begin(), ap.strings().end()))
              << w;
          break;
        case onnx::AttributeProto::TENSOR: EXPECT_TRUE(matches_proto(ap.t(), std::get<Tensor>(v))) << w << " " << ap.name(); break;
        case onnx::AttributeProto::GRAPH: {
          const Graph& sub = *std::get<GraphRef>(v);
          ASSERT_EQ(sub.nodes.size(), static_cast<size_t>(ap.g().node_size())) << w << " " << ap.name();
          for (int j = 0; j < ap.g().node_size(); ++j) EXPECT_EQ(sub.nodes[static_cast<size_t>(j)].op_type, ap.g().node(j).op_type()) << w;
          EXPECT_EQ(sub.outputs.size(), static_cast<size_t>(ap.g().output_size())) << w;
          break;
        }
        default: ADD_FAILURE() << w << ": attribute type " << ap.type() << " loaded without error";
      }
    }
  }
  ASSERT_EQ(m.graph.initializers.size(), static_cast<size_t>(gp.initializer_size())) << what;
  for (const auto& tp : gp.initializer()) {
    const Tensor* t = m.graph.initializer(tp.name());
    ASSERT_NE(t, nullptr) << what << " lost initializer " << tp.name();
    EXPECT_TRUE(matches_proto(tp, *t)) << what << " initializer " << tp.name();
  }
  // Graph inputs: the proto's, minus initializers (IR < 4 lists those as inputs too).
  std::vector<std::string> in_names, out_names;
  for (const auto& v : gp.input())
    if (!m.graph.is_initializer(v.name())) in_names.push_back(v.name());
  for (const auto& v : gp.output()) out_names.push_back(v.name());
  std::vector<std::string> got_in, got_out;
  for (const auto& v : m.graph.inputs) got_in.push_back(v.name);
  for (const auto& v : m.graph.outputs) got_out.push_back(v.name);
  EXPECT_EQ(got_in, in_names) << what;
  EXPECT_EQ(got_out, out_names) << what;
}

// load -> bytes -> load again: same IR; bytes -> load -> bytes: same bytes (serialization is deterministic).
void check_round_trip(const fs::path& file) {
  const std::string what = file.string();
  const Model a = load_model(file);
  onnx::ModelProto mp;
  ASSERT_TRUE(mp.ParseFromString(read_file(file))) << what;
  expect_matches_proto(mp, a, what + " (load vs protobuf)");
  const std::string bytes = model_to_bytes(a);
  const Model b = model_from_bytes(bytes, what + " (round trip)");
  expect_same_model(a, b, what + " (load vs round trip)");
  onnx::ModelProto mp2;
  ASSERT_TRUE(mp2.ParseFromString(bytes)) << what;
  expect_matches_proto(mp2, b, what + " (round trip vs its bytes)");
  EXPECT_EQ(model_to_bytes(b), bytes) << what << ": second serialization differs";
}

TEST(OnnxRoundTrip, SharedModels) {
  for (const char* name : {"fmnist_convnet.onnx", "fmnist_convnet_hard.onnx", "fmnist_mbv2.onnx"}) {
    SCOPED_TRACE(name);
    PERCH_REQUIRE_SHARED_MODEL(path, name);
    check_round_trip(path);
    if (HasFatalFailure()) return;
    // Same function: the executor gives bit-identical logits on the original and the round-tripped model.
    const Model a = load_model(path);
    const runtime::Executor ea(a), eb(model_from_bytes(model_to_bytes(a), "round trip"));
    std::mt19937 rng(7);
    std::normal_distribution<float> nd;
    std::vector<float> x(4 * 28 * 28);
    for (auto& v : x) v = nd(rng);
    const Tensor in = Tensor::from<float>({4, 1, 28, 28}, x);
    const Tensor ya = ea.run1(in), yb = eb.run1(in);
    ASSERT_EQ(ya.shape(), (Shape{4, 10}));
    EXPECT_TRUE(test::same_tensor(ya, yb));
  }
}

TEST(OnnxRoundTrip, EveryNodeTestModel) {
  const fs::path root = perch::test::onnx_node_test_dir();
  if (!fs::is_directory(root)) GTEST_SKIP() << root << " not present";
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(root))
    if (fs::exists(e.path() / "model.onnx")) files.push_back(e.path() / "model.onnx");
  std::sort(files.begin(), files.end());
  int loaded = 0, refused = 0;
  for (const auto& f : files) {
    bool ok = true;
    const std::string e = error_of([&] { (void)load_model(f); });
    if (!e.empty()) {
      ok = false;
      ++refused;
      // A refusal is a perch::Error naming the file, with a reason after it.
      EXPECT_EQ(e.rfind(f.string() + ": ", 0), 0u) << e;
    }
    if (!ok) continue;
    ++loaded;
    check_round_trip(f);
    if (HasFailure()) {
      ADD_FAILURE() << "stopping at the first failing model: " << f;
      return;
    }
  }
  std::cout << loaded << " node-test models round-tripped, " << refused << " refused with a named reason\n";
  EXPECT_GT(loaded, 800);  // libonnx-testdata 1.14 has 932 models; perch refuses ~40 (subgraphs, sequences, uint32/64)
}

// ---- saving -----------------------------------------------------------------------------------------

Model small_model(int64_t weights = 1000) {
  Model m;
  m.graph.name = "small";
  m.producer_name = "perch-test";
  m.set_opset(13);
  m.metadata = {{"k", "v"}};
  std::vector<float> w(static_cast<size_t>(weights));
  for (size_t i = 0; i < w.size(); ++i) w[i] = std::sin(static_cast<float>(i)) * 3.0f;
  m.graph.initializers["w"] = Tensor::from<float>({weights}, w);
  m.graph.initializers["shift"] = Tensor::from<int64_t>({2}, {-5, int64_t{1} << 40});
  Node n = make_node("Add", {"x", "w"}, {"y"}, "add0");
  n.attrs["note"] = std::string("hi");
  n.attrs["f"] = -0.0f;
  n.attrs["fs"] = std::vector<float>{std::nanf(""), 1.5f};
  m.graph.nodes.push_back(n);
  m.graph.inputs.push_back(make_value("x", {weights}));
  ValueInfo out = make_value("y", {-1});
  out.dim_names = {"n"};
  m.graph.outputs.push_back(out);
  return m;
}

TEST(OnnxSave, ReplacesExistingFileAtomicallyAndLeavesNoTemporaries) {
  TempDir dir;
  const fs::path target = dir.path() / "model.onnx";
  const std::string old = "previous contents that are not a model";
  { std::ofstream(target) << old; }
  // A hard link to the old file: an atomic replace (rename) gives `target` a new inode and leaves the old one
  // intact for readers that had it open; an in-place rewrite would change what the link sees.
  fs::create_hard_link(target, dir.path() / "old_link");
  const Model m = small_model();
  save_model(m, target);
  EXPECT_EQ(dir.listing(), (std::vector<std::string>{"model.onnx", "old_link"})) << "temporary file left behind";
  EXPECT_EQ(read_file(dir.path() / "old_link"), old) << "the old file was overwritten in place";
  EXPECT_EQ(read_file(target), model_to_bytes(m));
  const Model back = load_model(target);
  EXPECT_EQ(back.source, target.string());
  expect_same_model(m, back, "saved model");
  // Saving again over a valid model replaces it too.
  Model m2 = small_model(7);
  save_model(m2, target);
  expect_same_model(m2, load_model(target), "second save");
  EXPECT_EQ(dir.listing().size(), 2u);
}

TEST(OnnxSave, MissingFolderIsNamedAndNothingIsCreated) {
  TempDir dir;
  const fs::path target = dir.path() / "no_such_folder" / "m.onnx";
  const std::string e = error_of([&] { save_model(small_model(), target); });
  EXPECT_NE(e.find(target.string()), std::string::npos) << e;
  EXPECT_TRUE(dir.listing().empty());
}

// ---- refused inputs ----------------------------------------------------------------------------------

TEST(OnnxLoadErrors, MissingFileIsNamed) {
  const std::string p = "/nonexistent_perch_dir/missing_model.onnx";
  const std::string e = error_of([&] { (void)load_model(p); });
  EXPECT_NE(e.find(p), std::string::npos) << e;
}

TEST(OnnxLoadErrors, TruncatedFileIsNamed) {
  TempDir dir;
  const std::string bytes = model_to_bytes(small_model());
  for (size_t keep : {bytes.size() / 2, bytes.size() - 1, size_t{3}}) {
    const fs::path p = dir.path() / ("truncated_" + std::to_string(keep) + ".onnx");
    write_file_atomic(p, std::string_view(bytes).substr(0, keep));
    const std::string e = error_of([&] { (void)load_model(p); });
    EXPECT_EQ(e.rfind(p.string() + ": ", 0), 0u) << "keep " << keep << ": " << e;
  }
}

TEST(OnnxLoadErrors, CorruptAndEmptyFilesAreNamed) {
  TempDir dir;
  const fs::path corrupt = dir.path() / "corrupt.onnx";
  write_file_atomic(corrupt, std::string(32, '\xff'));  // a varint that never ends
  std::string e = error_of([&] { (void)load_model(corrupt); });
  EXPECT_NE(e.find(corrupt.string()), std::string::npos) << e;
  EXPECT_NE(e.find("not a valid ONNX model"), std::string::npos) << e;
  // An empty file parses as an empty ModelProto: refused for having no graph.
  const fs::path empty = dir.path() / "empty.onnx";
  write_file_atomic(empty, "");
  e = error_of([&] { (void)load_model(empty); });
  EXPECT_NE(e.find(empty.string()), std::string::npos) << e;
  EXPECT_NE(e.find("no graph"), std::string::npos) << e;
  // A tensor file that is not a TensorProto.
  e = error_of([&] { (void)read_tensor_pb(corrupt); });
  EXPECT_NE(e.find(corrupt.string()), std::string::npos) << e;
}

onnx::ModelProto proto_of(const Model& m) {
  onnx::ModelProto mp;
  EXPECT_TRUE(mp.ParseFromString(model_to_bytes(m)));
  return mp;
}

TEST(OnnxLoadErrors, ExternalDataIsRefusedNamingFileAndTensor) {
  TempDir dir;
  onnx::ModelProto mp = proto_of(small_model());
  auto* w = mp.mutable_graph()->mutable_initializer(0);
  const std::string tname = w->name();
  w->clear_raw_data();
  w->set_data_location(onnx::TensorProto::EXTERNAL);
  auto* kv = w->add_external_data();
  kv->set_key("location");
  kv->set_value("weights.bin");
  const fs::path p = dir.path() / "external.onnx";
  write_file_atomic(p, mp.SerializeAsString());
  const std::string e = error_of([&] { (void)load_model(p); });
  EXPECT_EQ(e.rfind(p.string() + ": ", 0), 0u) << e;
  EXPECT_NE(e.find("'" + tname + "'"), std::string::npos) << e;
  EXPECT_NE(e.find("external data"), std::string::npos) << e;
}

// A subgraph reading a value no enclosing graph defines: refused at load, naming the control-flow node and the value.
TEST(OnnxLoadErrors, SubgraphReadOfAnUndefinedValueIsNamed) {
  auto branch = std::make_shared<Graph>();
  branch->name = "then";
  branch->nodes.push_back(make_node("Neg", {"nowhere"}, {"n"}, "neg"));
  branch->outputs.push_back(make_value("n", {-1}));
  Model m;
  m.graph.name = "g";
  m.set_opset(13);
  m.graph.inputs.push_back(make_value("cond", {}));
  m.graph.inputs.back().dtype = DType::kBool;
  Node iff = make_node("If", {"cond"}, {"y"}, "branchy");
  iff.attrs["then_branch"] = GraphRef(branch);
  iff.attrs["else_branch"] = GraphRef(branch);
  m.graph.nodes.push_back(iff);
  m.graph.outputs.push_back(make_value("y", {-1}));
  const std::string e = error_of([&] { (void)model_from_bytes(model_to_bytes(m), "undefined.onnx"); });
  for (const std::string& want : {std::string("undefined.onnx: "), std::string("If node 'branchy'"), std::string("'nowhere'")})
    EXPECT_NE(e.find(want), std::string::npos) << "missing '" << want << "' in: " << e;
}

TEST(OnnxLoadErrors, SubgraphListsAreRefusedNamingNodeAndAttribute) {
  TempDir dir;
  onnx::ModelProto mp = proto_of(small_model());
  auto* n = mp.mutable_graph()->add_node();
  n->set_op_type("Custom");
  n->set_name("branchy");
  n->add_input("x");
  n->add_output("z");
  auto* a = n->add_attribute();
  a->set_name("branches");
  a->set_type(onnx::AttributeProto::GRAPHS);
  a->add_graphs()->set_name("one");
  const fs::path p = dir.path() / "subgraphs.onnx";
  write_file_atomic(p, mp.SerializeAsString());
  const std::string e = error_of([&] { (void)load_model(p); });
  for (const std::string& want : {p.string() + ": ", std::string("Custom node 'branchy'"), std::string("'branches'"),
                                 std::string("lists of subgraphs")})
    EXPECT_NE(e.find(want), std::string::npos) << "missing '" << want << "' in: " << e;
}

// Subgraphs load with the values they read from enclosing scopes as extra inputs of their node (nested ones
// propagate outwards), save without them, and follow a pass that renames such an input.
TEST(OnnxRoundTrip, SubgraphsKeepTheirOuterReferences) {
  // y = If(sum(a) > 0, then: Loop 3 times v <- v * w + a, else: -a), a = x + b
  auto value = [](const std::string& name, DType t = DType::kFloat32) {
    ValueInfo v;
    v.name = name;
    v.dtype = t;
    return v;
  };
  auto body = std::make_shared<Graph>();
  body->name = "body";
  body->inputs = {value("i", DType::kInt64), value("c", DType::kBool), value("v")};
  body->nodes.push_back(make_node("Mul", {"v", "w"}, {"vw"}, "mul"));
  body->nodes.push_back(make_node("Add", {"vw", "a"}, {"v_next"}, "add"));
  body->nodes.push_back(make_node("Identity", {"c"}, {"c_next"}, "keep"));
  body->outputs = {value("c_next", DType::kBool), value("v_next")};
  auto then_g = std::make_shared<Graph>();
  then_g->name = "then";
  then_g->initializers["trips"] = Tensor::from<int64_t>({}, {3});
  Node loop = make_node("Loop", {"trips", "", "a"}, {"looped"}, "loop");
  loop.attrs["body"] = GraphRef(body);
  then_g->nodes.push_back(loop);
  then_g->outputs = {value("looped")};
  auto else_g = std::make_shared<Graph>();
  else_g->name = "else";
  else_g->nodes.push_back(make_node("Neg", {"a"}, {"neg"}, "neg"));
  else_g->outputs = {value("neg")};
  Model m;
  m.graph.name = "control";
  m.set_opset(13);
  m.graph.inputs.push_back(make_value("x", {4}));
  m.graph.initializers["b"] = Tensor::from<float>({4}, {0.5f, -1.0f, 2.0f, 0.25f});
  m.graph.initializers["w"] = Tensor::from<float>({4}, {0.5f, 2.0f, -1.0f, 1.5f});
  m.graph.initializers["zero"] = Tensor::from<float>({}, {0.0f});
  m.graph.nodes.push_back(make_node("Add", {"x", "b"}, {"a"}, "add_b"));
  m.graph.nodes.push_back(make_node("ReduceSum", {"a"}, {"s"}, "sum"));
  m.graph.nodes.push_back(make_node("Greater", {"s", "zero"}, {"cond"}, "positive"));
  Node iff = make_node("If", {"cond"}, {"y"}, "branch");
  iff.attrs["then_branch"] = GraphRef(then_g);
  iff.attrs["else_branch"] = GraphRef(else_g);
  m.graph.nodes.push_back(iff);
  m.graph.outputs.push_back(make_value("y", {4}));

  const Model a = model_from_bytes(model_to_bytes(m), "control");
  const Node& loaded = a.graph.nodes.back();
  EXPECT_EQ(loaded.captured, (std::vector<std::string>{"a", "w"}));  // then's Loop reads a (and w in its body)
  EXPECT_EQ(loaded.inputs, (std::vector<std::string>{"cond", "a", "w"}));
  const Node& inner = a.graph.nodes.back().attr_graph("then_branch")->nodes[0];
  EXPECT_EQ(inner.captured, (std::vector<std::string>{"w", "a"}));  // the body reads w, then a
  expect_same_model(a, model_from_bytes(model_to_bytes(a), "again"), "control round trip");
  auto expected = [&](const std::vector<float>& x) {
    std::vector<float> av(4), y(4);
    float sum = 0;
    for (int k = 0; k < 4; ++k) av[k] = x[k] + m.graph.initializers["b"].data<float>()[k], sum += av[k];
    for (int k = 0; k < 4; ++k) {
      float v = av[k];
      for (int t = 0; t < 3; ++t) v = v * m.graph.initializers["w"].data<float>()[k] + av[k];
      y[k] = sum > 0 ? v : -av[k];
    }
    return y;
  };
  for (const std::vector<float>& x : {std::vector<float>{1, 2, 3, 4}, std::vector<float>{-3, -2, -1, -4}}) {
    const Tensor y = runtime::Executor(a).run1(Tensor::from<float>({4}, x));
    const auto want = expected(x);
    for (int k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(y.data<float>()[k], want[k]) << k;
  }
  // A pass renames the captured value a (as QDQ insertion does: a -> a_dequantized): the saved subgraphs read the
  // new name, and the model computes the same.
  Model renamed = a;
  renamed.graph.nodes.insert(renamed.graph.nodes.end() - 1, make_node("Identity", {"a"}, {"a_copy"}, "copy"));
  renamed.graph.nodes.back().inputs[1] = "a_copy";
  const Model b = model_from_bytes(model_to_bytes(renamed), "renamed");
  EXPECT_EQ(b.graph.nodes.back().captured, (std::vector<std::string>{"a_copy", "w"}));
  const Tensor x = Tensor::from<float>({4}, {1, 2, 3, 4});
  EXPECT_TRUE(test::same_tensor(runtime::Executor(b).run1(x), runtime::Executor(a).run1(x)));
}

TEST(OnnxLoadErrors, RawDataOfTheWrongSizeIsNamed) {
  onnx::ModelProto mp = proto_of(small_model());
  auto* w = mp.mutable_graph()->mutable_initializer(0);
  w->mutable_raw_data()->resize(w->raw_data().size() - 4);
  const std::string e = error_of([&] { (void)model_from_bytes(mp.SerializeAsString(), "short.onnx"); });
  EXPECT_EQ(e.rfind("short.onnx: ", 0), 0u) << e;
  EXPECT_NE(e.find("'" + w->name() + "'"), std::string::npos) << e;
}

TEST(OnnxTensorPb, WriteReadRoundTripIsBitIdentical) {
  TempDir dir;
  const Tensor t = Tensor::from<float>({2, 3}, {0.0f, -0.0f, std::nanf(""), 1e-45f, -3.5f, 1e30f});
  write_tensor_pb(dir.path() / "t.pb", t, "t");
  EXPECT_TRUE(test::same_tensor(read_tensor_pb(dir.path() / "t.pb"), t));
  const Tensor i = Tensor::from<int64_t>({3}, {std::numeric_limits<int64_t>::min(), 0, 42});
  write_tensor_pb(dir.path() / "i.pb", i, "i");
  EXPECT_TRUE(test::same_tensor(read_tensor_pb(dir.path() / "i.pb"), i));
  EXPECT_EQ(dir.listing(), (std::vector<std::string>{"i.pb", "t.pb"}));
}

// FLOAT16 tensors: raw_data (as perch writes them) and int32_data, where ONNX stores each value's 16 bits.
TEST(OnnxTensorPb, Float16InRawDataAndInInt32Data) {
  TempDir dir;
  const std::vector<uint16_t> bits = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x7c00, 0x8000};
  Tensor h(DType::kFloat16, {2, 3});
  for (size_t i = 0; i < bits.size(); ++i) h.data<Half>()[i] = Half{bits[i]};
  write_tensor_pb(dir.path() / "raw.pb", h, "h");
  EXPECT_TRUE(test::same_tensor(read_tensor_pb(dir.path() / "raw.pb"), h));
  onnx::TensorProto p;
  p.set_name("h");
  p.set_data_type(onnx::TensorProto::FLOAT16);
  p.add_dims(2), p.add_dims(3);
  for (uint16_t b : bits) p.add_int32_data(b);
  {
    std::ofstream f(dir.path() / "typed.pb", std::ios::binary);
    ASSERT_TRUE(p.SerializeToOstream(&f));
  }
  const Tensor r = read_tensor_pb(dir.path() / "typed.pb");
  ASSERT_EQ(r.dtype(), DType::kFloat16);
  EXPECT_TRUE(test::same_tensor(r, h));
  EXPECT_EQ(r.to_f32().data<float>()[1], -2.0f);
  EXPECT_EQ(r.to_f32().data<float>()[2], 65504.0f);
}

}  // namespace
}  // namespace perch::graph
