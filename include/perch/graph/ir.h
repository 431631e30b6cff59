// perch/graph/ir.h — perch's own graph IR: a model is a list of nodes over named values.
//
// Values are identified by name, as in ONNX. Constant tensors ("initializers") live in
// Graph::initializers. Nodes are kept in a valid topological order (toposort() restores it after a
// pass has edited the graph). Shapes use -1 for unknown/dynamic dims.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "perch/core/tensor.h"

namespace perch::graph {

struct Graph;
// A subgraph attribute (If's branches, Loop's and Scan's body): shared and never modified in place.
using GraphRef = std::shared_ptr<const Graph>;

using AttrValue = std::variant<int64_t, float, std::string, std::vector<int64_t>, std::vector<float>,
                               std::vector<std::string>, Tensor, GraphRef>;

struct Node {
  std::string name;
  std::string op_type;
  std::string domain;  // "" = ai.onnx
  std::vector<std::string> inputs;   // "" = omitted optional input
  std::vector<std::string> outputs;
  std::map<std::string, AttrValue> attrs;
  // Control flow (If, Loop, Scan): the outer-scope values its subgraphs read. They follow the ONNX inputs in `inputs`
  // (so every pass sees them as uses, renames them and keeps them alive); `captured` holds the names the subgraphs
  // use for them, in the same order. onnx_io sets both when loading and saves the ONNX inputs alone, renaming the
  // subgraphs' references where a pass renamed a captured input.
  std::vector<std::string> captured;

  bool has_attr(const std::string& key) const { return attrs.count(key) != 0; }
  int64_t attr_int(const std::string& key, int64_t dflt) const;
  float attr_float(const std::string& key, float dflt) const;
  std::string attr_string(const std::string& key, const std::string& dflt) const;
  std::vector<int64_t> attr_ints(const std::string& key, const std::vector<int64_t>& dflt = {}) const;
  std::vector<float> attr_floats(const std::string& key, const std::vector<float>& dflt = {}) const;
  const Tensor* attr_tensor(const std::string& key) const;
  const Graph* attr_graph(const std::string& key) const;
  // The subgraph attributes, by attribute name.
  std::vector<std::pair<std::string, const Graph*>> subgraphs() const;
  // Inputs as ONNX has them (without the captured values).
  size_t formal_input_count() const { return inputs.size() - captured.size(); }
  // "Conv 'conv1'" — used in every error message about this node.
  std::string describe() const;
  // "<describe()>: message", or `message` alone when it names this node first already (a kernel's own error).
  std::string prefixed(const std::string& message) const;
  // The i-th input name, or "" if absent.
  const std::string& input(size_t i) const;
};

struct ValueInfo {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;                       // -1 for unknown dims
  std::vector<std::string> dim_names;  // symbolic names ("N", "batch") parallel to shape, "" if none
  bool has_shape = false;
};

struct Graph {
  std::string name;
  std::vector<Node> nodes;
  std::vector<ValueInfo> inputs;   // real inputs only (initializers are not listed here)
  std::vector<ValueInfo> outputs;
  std::vector<ValueInfo> value_info;
  std::map<std::string, Tensor> initializers;

  bool is_initializer(const std::string& v) const { return initializers.count(v) != 0; }
  const Tensor* initializer(const std::string& v) const;
  // Index of the node producing `v`, or -1 (graph input / initializer / absent).
  int64_t producer(const std::string& v) const;
  // Indices of nodes consuming `v`.
  std::vector<size_t> consumers(const std::string& v) const;
  bool is_graph_output(const std::string& v) const;
  // Reorders nodes topologically; throws naming a node on a cycle or an undefined input.
  void toposort();
  // A value name not yet used in the graph, derived from `base`.
  std::string unique_name(const std::string& base) const;
  // Removes initializers that no node uses any more.
  void prune_unused_initializers();
};

// Values `g`'s nodes (and outputs) read that `g` does not define — its graph inputs, initializers and node outputs —
// in order of first use: what a subgraph takes from its enclosing scopes.
std::vector<std::string> outer_references(const Graph& g);

struct OpsetId {
  std::string domain;
  int64_t version = 0;
};

struct Model {
  Graph graph;
  int64_t ir_version = 8;
  std::vector<OpsetId> opsets;
  std::string producer_name;
  std::string producer_version;
  std::string domain;
  int64_t model_version = 0;
  std::string doc_string;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::string source;  // file the model came from, for error messages

  // Version of the default (ai.onnx) opset, 0 if absent.
  int64_t opset() const;
  void set_opset(int64_t version);
};

}  // namespace perch::graph
