// ONNX protobuf <-> perch IR.
#include "perch/graph/onnx_io.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "perch/core/file_io.h"

namespace perch::graph {

namespace {

using onnx::TensorProto;

DType dtype_from_onnx(int32_t t, const std::string& what) {
  switch (t) {
    case TensorProto::FLOAT: return DType::kFloat32;
    case TensorProto::DOUBLE: return DType::kFloat64;
    case TensorProto::INT8: return DType::kInt8;
    case TensorProto::UINT8: return DType::kUInt8;
    case TensorProto::INT16: return DType::kInt16;
    case TensorProto::UINT16: return DType::kUInt16;
    case TensorProto::INT32: return DType::kInt32;
    case TensorProto::INT64: return DType::kInt64;
    case TensorProto::BOOL: return DType::kBool;
    case TensorProto::FLOAT16: return DType::kFloat16;
    case TensorProto::BFLOAT16: return DType::kBFloat16;
    default: break;
  }
  const char* name = TensorProto::DataType_IsValid(t) ? TensorProto::DataType_Name(static_cast<TensorProto::DataType>(t)).c_str() : "invalid";
  PERCH_FAIL(what, ": element type ", name, " (", t, ") is not supported by perch");
}

int32_t dtype_to_onnx(DType t) {
  switch (t) {
    case DType::kFloat32: return TensorProto::FLOAT;
    case DType::kFloat64: return TensorProto::DOUBLE;
    case DType::kInt8: return TensorProto::INT8;
    case DType::kUInt8: return TensorProto::UINT8;
    case DType::kInt16: return TensorProto::INT16;
    case DType::kUInt16: return TensorProto::UINT16;
    case DType::kInt32: return TensorProto::INT32;
    case DType::kInt64: return TensorProto::INT64;
    case DType::kBool: return TensorProto::BOOL;
    case DType::kFloat16: return TensorProto::FLOAT16;
    case DType::kBFloat16: return TensorProto::BFLOAT16;
  }
  return TensorProto::UNDEFINED;
}

template <typename T, typename Field>
void copy_field(const Field& field, Tensor& t, const std::string& what) {
  PERCH_CHECK(static_cast<int64_t>(field.size()) == t.numel(), what, ": holds ", field.size(), " values but its shape ",
              shape_str(t.shape()), " needs ", t.numel());
  T* d = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = static_cast<T>(field.Get(static_cast<int>(i)));
}

Tensor tensor_from_proto(const TensorProto& p, const std::string& what_in) {
  const std::string what = what_in + (p.name().empty() ? "" : " '" + p.name() + "'");
  PERCH_CHECK(p.data_location() != TensorProto::EXTERNAL && p.external_data_size() == 0, what,
              ": stored as external data, which perch does not read yet (models > 2 GiB or saved with "
              "save_as_external_data); convert it to a single file");
  PERCH_CHECK(!p.has_segment(), what, ": segmented tensors are not supported");
  Shape shape(p.dims().begin(), p.dims().end());
  DType dt = dtype_from_onnx(p.data_type(), what);
  const int64_t numel = checked_numel(shape, what);
  // The data must be in the file before anything is allocated: a few bytes of dims must not buy gigabytes.
  if (p.has_raw_data()) {
    const auto need = static_cast<uint64_t>(numel) * dtype_size(dt);
    PERCH_CHECK(p.raw_data().size() == need, what, ": raw_data has ", p.raw_data().size(), " bytes but shape ",
                shape_str(shape), " of ", dtype_name(dt), " needs ", need);
  } else {
    int64_t held = 0;
    switch (dt) {
      case DType::kFloat32: held = p.float_data_size(); break;
      case DType::kFloat64: held = p.double_data_size(); break;
      case DType::kInt64: held = p.int64_data_size(); break;
      default: held = p.int32_data_size(); break;
    }
    PERCH_CHECK(held == numel, what, ": holds ", held, " values but its shape ", shape_str(shape), " needs ", numel);
  }
  Tensor t(dt, shape);
  if (p.has_raw_data()) {
    if (t.nbytes()) std::memcpy(t.raw(), p.raw_data().data(), t.nbytes());  // little-endian host
    return t;
  }
  switch (dt) {
    case DType::kFloat32: copy_field<float>(p.float_data(), t, what); break;
    case DType::kFloat64: copy_field<double>(p.double_data(), t, what); break;
    case DType::kInt64: copy_field<int64_t>(p.int64_data(), t, what); break;
    case DType::kInt8: copy_field<int8_t>(p.int32_data(), t, what); break;
    case DType::kUInt8: copy_field<uint8_t>(p.int32_data(), t, what); break;
    case DType::kInt16: copy_field<int16_t>(p.int32_data(), t, what); break;
    case DType::kUInt16: copy_field<uint16_t>(p.int32_data(), t, what); break;
    case DType::kInt32: copy_field<int32_t>(p.int32_data(), t, what); break;
    case DType::kBool: copy_field<bool>(p.int32_data(), t, what); break;
    case DType::kFloat16:  // int32_data holds each value's 16 bits (ONNX's convention for FLOAT16)
      for (int64_t i = 0; i < t.numel(); ++i) t.data<Half>()[i] = Half{static_cast<uint16_t>(p.int32_data(static_cast<int>(i)))};
      break;
    case DType::kBFloat16:  // likewise for BFLOAT16
      for (int64_t i = 0; i < t.numel(); ++i)
        t.data<BFloat16>()[i] = BFloat16{static_cast<uint16_t>(p.int32_data(static_cast<int>(i)))};
      break;
  }
  return t;
}

void tensor_to_proto(const Tensor& t, const std::string& name, TensorProto* p) {
  p->set_name(name);
  p->set_data_type(dtype_to_onnx(t.dtype()));
  for (int64_t d : t.shape()) p->add_dims(d);
  p->set_raw_data(std::string(static_cast<const char*>(t.raw()), t.nbytes()));
}

void value_info_from_proto(const onnx::ValueInfoProto& p, ValueInfo& v, const std::string& what) {
  v.name = p.name();
  if (!p.has_type()) return;
  PERCH_CHECK(p.type().has_tensor_type(), what, ": value '", p.name(), "' is not a tensor (sequences/maps are not supported)");
  const auto& tt = p.type().tensor_type();
  if (tt.elem_type() != 0) {
    try {
      v.dtype = dtype_from_onnx(tt.elem_type(), what + ": value '" + p.name() + "'");
    } catch (const Error&) {
      v.dtype = DType::kFloat32;  // unsupported types surface when a kernel touches them
      if (tt.elem_type() != TensorProto::STRING) throw;
    }
  }
  if (tt.has_shape()) {
    v.has_shape = true;
    for (const auto& d : tt.shape().dim()) {
      v.shape.push_back(d.has_dim_value() ? d.dim_value() : -1);
      v.dim_names.push_back(d.has_dim_param() ? d.dim_param() : "");
    }
  }
}

void value_info_to_proto(const ValueInfo& v, onnx::ValueInfoProto* p) {
  p->set_name(v.name);
  auto* tt = p->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(dtype_to_onnx(v.dtype));
  if (!v.has_shape) return;
  auto* sh = tt->mutable_shape();
  for (size_t i = 0; i < v.shape.size(); ++i) {
    auto* d = sh->add_dim();
    if (i < v.dim_names.size() && !v.dim_names[i].empty())
      d->set_dim_param(v.dim_names[i]);
    else if (v.shape[i] >= 0)
      d->set_dim_value(v.shape[i]);
  }
}

Graph graph_from_proto(const onnx::GraphProto& gp, const std::string& what);
void graph_to_proto(const Graph& g, onnx::GraphProto* gp);

Node node_from_proto(const onnx::NodeProto& p, const std::string& what) {
  Node n;
  n.name = p.name();
  n.op_type = p.op_type();
  n.domain = p.domain() == "ai.onnx" ? "" : p.domain();
  n.inputs.assign(p.input().begin(), p.input().end());
  n.outputs.assign(p.output().begin(), p.output().end());
  // Every ONNX operator produces at least one output (the checker refuses such a node); perch's passes and
  // kernels rely on it.
  PERCH_CHECK(std::any_of(n.outputs.begin(), n.outputs.end(), [](const std::string& o) { return !o.empty(); }), what,
              ": ", n.describe(), " has no outputs (every ONNX operator produces at least one)");
  for (const auto& a : p.attribute()) {
    const std::string where = what + ": " + n.describe() + " attribute '" + a.name() + "'";
    PERCH_CHECK(a.ref_attr_name().empty(), where, ": attribute references (functions) are not supported");
    switch (a.type()) {
      case onnx::AttributeProto::INT: n.attrs[a.name()] = static_cast<int64_t>(a.i()); break;
      case onnx::AttributeProto::FLOAT: n.attrs[a.name()] = a.f(); break;
      case onnx::AttributeProto::STRING: n.attrs[a.name()] = a.s(); break;
      case onnx::AttributeProto::INTS: n.attrs[a.name()] = std::vector<int64_t>(a.ints().begin(), a.ints().end()); break;
      case onnx::AttributeProto::FLOATS: n.attrs[a.name()] = std::vector<float>(a.floats().begin(), a.floats().end()); break;
      case onnx::AttributeProto::STRINGS: n.attrs[a.name()] = std::vector<std::string>(a.strings().begin(), a.strings().end()); break;
      case onnx::AttributeProto::TENSOR: n.attrs[a.name()] = tensor_from_proto(a.t(), where); break;
      case onnx::AttributeProto::GRAPH:
        n.attrs[a.name()] = std::make_shared<const Graph>(graph_from_proto(a.g(), where));
        break;
      case onnx::AttributeProto::GRAPHS:
        PERCH_FAIL(where, ": lists of subgraphs (GRAPHS attributes) are not supported");
      default:
        PERCH_FAIL(where, ": attribute type ", static_cast<int>(a.type()), " is not supported");
    }
  }
  // The values its subgraphs read from enclosing scopes become extra inputs (Node::captured).
  std::vector<std::string> outer;
  for (const auto& [key, g] : n.subgraphs())
    for (const auto& v : outer_references(*g))
      if (std::find(outer.begin(), outer.end(), v) == outer.end()) outer.push_back(v);
  n.captured = outer;
  n.inputs.insert(n.inputs.end(), outer.begin(), outer.end());
  return n;
}

// `g` with its reads of outer values renamed by `to` (nested subgraphs see the renamed names through their nodes'
// captured inputs, renamed here too).
Graph renamed_outer(const Graph& g, const std::map<std::string, std::string>& to) {
  Graph r = g;
  for (auto& nd : r.nodes)
    for (auto& in : nd.inputs)
      if (auto it = to.find(in); it != to.end()) in = it->second;
  for (auto& o : r.outputs)
    if (auto it = to.find(o.name); it != to.end()) o.name = it->second;
  return r;
}

void node_to_proto(const Node& n, onnx::NodeProto* p) {
  p->set_name(n.name);
  p->set_op_type(n.op_type);
  if (!n.domain.empty()) p->set_domain(n.domain);
  PERCH_CHECK(n.captured.size() <= n.inputs.size(), n.describe(), ": more captured values than inputs");
  for (size_t i = 0; i < n.formal_input_count(); ++i) p->add_input(n.inputs[i]);
  std::map<std::string, std::string> renamed;  // a pass renamed a captured value: the subgraphs must follow
  for (size_t i = 0; i < n.captured.size(); ++i)
    if (n.inputs[n.formal_input_count() + i] != n.captured[i]) renamed[n.captured[i]] = n.inputs[n.formal_input_count() + i];
  for (const auto& o : n.outputs) p->add_output(o);
  for (const auto& [key, val] : n.attrs) {
    auto* a = p->add_attribute();
    a->set_name(key);
    std::visit(
        [&](const auto& v) {
          using V = std::decay_t<decltype(v)>;
          if constexpr (std::is_same_v<V, int64_t>) {
            a->set_type(onnx::AttributeProto::INT);
            a->set_i(v);
          } else if constexpr (std::is_same_v<V, float>) {
            a->set_type(onnx::AttributeProto::FLOAT);
            a->set_f(v);
          } else if constexpr (std::is_same_v<V, std::string>) {
            a->set_type(onnx::AttributeProto::STRING);
            a->set_s(v);
          } else if constexpr (std::is_same_v<V, std::vector<int64_t>>) {
            a->set_type(onnx::AttributeProto::INTS);
            for (auto x : v) a->add_ints(x);
          } else if constexpr (std::is_same_v<V, std::vector<float>>) {
            a->set_type(onnx::AttributeProto::FLOATS);
            for (auto x : v) a->add_floats(x);
          } else if constexpr (std::is_same_v<V, std::vector<std::string>>) {
            a->set_type(onnx::AttributeProto::STRINGS);
            for (const auto& x : v) a->add_strings(x);
          } else if constexpr (std::is_same_v<V, GraphRef>) {
            a->set_type(onnx::AttributeProto::GRAPH);
            graph_to_proto(renamed.empty() ? *v : renamed_outer(*v, renamed), a->mutable_g());
          } else {
            a->set_type(onnx::AttributeProto::TENSOR);
            tensor_to_proto(v, "", a->mutable_t());
          }
        },
        val);
  }
}

// A graph (the model's, or a subgraph: its nodes in ONNX's order, which must be topological).
Graph graph_from_proto(const onnx::GraphProto& gp, const std::string& what) {
  Graph g;
  g.name = gp.name();
  PERCH_CHECK(gp.sparse_initializer_size() == 0, what, ": sparse initializers are not supported");
  for (const auto& t : gp.initializer()) {
    PERCH_CHECK(!t.name().empty(), what, ": an initializer has no name");
    g.initializers[t.name()] = tensor_from_proto(t, what + ": initializer");
  }
  for (const auto& vi : gp.input()) {
    if (g.initializers.count(vi.name())) continue;  // IR < 4 lists initializers as inputs too
    ValueInfo v;
    value_info_from_proto(vi, v, what);
    g.inputs.push_back(std::move(v));
  }
  for (const auto& vi : gp.output()) {
    ValueInfo v;
    value_info_from_proto(vi, v, what);
    g.outputs.push_back(std::move(v));
  }
  for (const auto& vi : gp.value_info()) {
    ValueInfo v;
    value_info_from_proto(vi, v, what);
    g.value_info.push_back(std::move(v));
  }
  for (const auto& np : gp.node()) g.nodes.push_back(node_from_proto(np, what));
  return g;
}

void graph_to_proto(const Graph& g, onnx::GraphProto* gp) {
  gp->set_name(g.name);
  for (const auto& n : g.nodes) node_to_proto(n, gp->add_node());
  for (const auto& [name, t] : g.initializers) tensor_to_proto(t, name, gp->add_initializer());
  for (const auto& v : g.inputs) value_info_to_proto(v, gp->add_input());
  for (const auto& v : g.outputs) value_info_to_proto(v, gp->add_output());
  for (const auto& v : g.value_info) value_info_to_proto(v, gp->add_value_info());
}

}  // namespace

Model model_from_bytes(const std::string& bytes, const std::string& what) {
  onnx::ModelProto mp;
  PERCH_CHECK(bytes.size() < (size_t{1} << 31), what, ": ", bytes.size(),
              " bytes exceeds protobuf's 2 GiB limit; models this large need external data, which perch does not read yet");
  PERCH_CHECK(mp.ParseFromString(bytes), what, ": not a valid ONNX model (protobuf parse failed: truncated or corrupt file?)");
  PERCH_CHECK(mp.has_graph(), what, ": ONNX model has no graph");
  Model m;
  m.source = what;
  m.ir_version = mp.ir_version();
  for (const auto& o : mp.opset_import()) m.opsets.push_back({o.domain() == "ai.onnx" ? "" : o.domain(), o.version()});
  if (m.opsets.empty()) m.opsets.push_back({"", 1});  // ONNX: no opset_import means opset 1
  m.producer_name = mp.producer_name();
  m.producer_version = mp.producer_version();
  m.domain = mp.domain();
  m.model_version = mp.model_version();
  m.doc_string = mp.doc_string();
  for (const auto& kv : mp.metadata_props()) m.metadata.emplace_back(kv.key(), kv.value());
  PERCH_CHECK(mp.functions_size() == 0, what, ": model-local functions are not supported");

  m.graph = graph_from_proto(mp.graph(), what);
  // Constant nodes are kept as nodes (round trip keeps the graph as written); the executor folds them.
  try {
    m.graph.toposort();
  } catch (const Error& e) {
    PERCH_FAIL(what, ": ", e.what());
  }
  return m;
}

std::string model_to_bytes(const Model& m) {
  onnx::ModelProto mp;
  mp.set_ir_version(m.ir_version);
  for (const auto& o : m.opsets) {
    auto* op = mp.add_opset_import();
    op->set_domain(o.domain);
    op->set_version(o.version);
  }
  mp.set_producer_name(m.producer_name);
  mp.set_producer_version(m.producer_version);
  if (!m.domain.empty()) mp.set_domain(m.domain);
  if (m.model_version) mp.set_model_version(m.model_version);
  if (!m.doc_string.empty()) mp.set_doc_string(m.doc_string);
  for (const auto& [k, v] : m.metadata) {
    auto* kv = mp.add_metadata_props();
    kv->set_key(k);
    kv->set_value(v);
  }
  graph_to_proto(m.graph, mp.mutable_graph());
  std::string bytes;
  PERCH_CHECK(mp.SerializeToString(&bytes), "serializing model '", m.graph.name, "' failed (larger than 2 GiB?)");
  return bytes;
}


Model load_model(const std::filesystem::path& path) {
  PERCH_CHECK(std::filesystem::is_regular_file(path), path.string(), ": no such model file");
  auto size = std::filesystem::file_size(path);
  PERCH_CHECK(size < (uintmax_t{1} << 31), path.string(), ": ", size,
              " bytes exceeds protobuf's 2 GiB limit (external data is not supported yet)");
  return model_from_bytes(read_file(path), path.string());
}

void save_model(const Model& model, const std::filesystem::path& path) {
  write_file_atomic(path, model_to_bytes(model));
}

Tensor read_tensor_pb(const std::filesystem::path& path) {
  TensorProto p;
  PERCH_CHECK(p.ParseFromString(read_file(path)), path.string(), ": not a valid TensorProto");
  return tensor_from_proto(p, path.string());
}

void write_tensor_pb(const std::filesystem::path& path, const Tensor& t, const std::string& name) {
  TensorProto p;
  tensor_to_proto(t, name, &p);
  write_file_atomic(path, p.SerializeAsString());
}

}  // namespace perch::graph
