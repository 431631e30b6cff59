// Helpers for the graph tests: building small models by hand and comparing two models field by field.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "perch/graph/ir.h"

namespace perch::graph::test {

inline Node make_node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
                      const std::string& name = "") {
  Node n;
  n.op_type = op;
  n.name = name;
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

inline ValueInfo make_value(const std::string& name, Shape shape, DType dt = DType::kFloat32) {
  ValueInfo v;
  v.name = name;
  v.dtype = dt;
  v.shape = std::move(shape);
  v.dim_names.assign(v.shape.size(), "");
  v.has_shape = true;
  return v;
}

// Same dtype, shape and bytes (so NaN payloads and -0.0 count).
inline bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

inline bool same_graph(const Graph& a, const Graph& b);

inline bool same_attr(const AttrValue& a, const AttrValue& b) {
  if (a.index() != b.index()) return false;
  if (const auto* g = std::get_if<GraphRef>(&a)) return same_graph(**g, *std::get<GraphRef>(b));
  if (const auto* t = std::get_if<Tensor>(&a)) return same_tensor(*t, std::get<Tensor>(b));
  if (const auto* f = std::get_if<float>(&a)) return std::memcmp(f, &std::get<float>(b), sizeof(float)) == 0;
  if (const auto* fs = std::get_if<std::vector<float>>(&a)) {
    const auto& gs = std::get<std::vector<float>>(b);
    return fs->size() == gs.size() && (fs->empty() || std::memcmp(fs->data(), gs.data(), fs->size() * sizeof(float)) == 0);
  }
  if (const auto* i = std::get_if<int64_t>(&a)) return *i == std::get<int64_t>(b);
  if (const auto* s = std::get_if<std::string>(&a)) return *s == std::get<std::string>(b);
  if (const auto* is = std::get_if<std::vector<int64_t>>(&a)) return *is == std::get<std::vector<int64_t>>(b);
  return std::get<std::vector<std::string>>(a) == std::get<std::vector<std::string>>(b);
}

inline bool same_values(const std::vector<ValueInfo>& a, const std::vector<ValueInfo>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].has_shape != b[i].has_shape || a[i].shape != b[i].shape ||
        a[i].dim_names != b[i].dim_names)
      return false;
  return true;
}

// Subgraphs compared in full: nodes (attributes recursively), values and initializers bit for bit.
inline bool same_graph(const Graph& a, const Graph& b) {
  if (a.name != b.name || a.nodes.size() != b.nodes.size() || !same_values(a.inputs, b.inputs) ||
      !same_values(a.outputs, b.outputs) || !same_values(a.value_info, b.value_info) ||
      a.initializers.size() != b.initializers.size())
    return false;
  for (size_t i = 0; i < a.nodes.size(); ++i) {
    const Node &x = a.nodes[i], &y = b.nodes[i];
    if (x.name != y.name || x.op_type != y.op_type || x.domain != y.domain || x.inputs != y.inputs ||
        x.outputs != y.outputs || x.captured != y.captured || x.attrs.size() != y.attrs.size())
      return false;
    for (const auto& [k, v] : x.attrs) {
      auto it = y.attrs.find(k);
      if (it == y.attrs.end() || !same_attr(v, it->second)) return false;
    }
  }
  for (const auto& [k, t] : a.initializers) {
    auto it = b.initializers.find(k);
    if (it == b.initializers.end() || !same_tensor(t, it->second)) return false;
  }
  return true;
}

inline void expect_same_value_infos(const std::vector<ValueInfo>& a, const std::vector<ValueInfo>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name) << what << " " << i;
    EXPECT_EQ(a[i].dtype, b[i].dtype) << what << " '" << a[i].name << "'";
    EXPECT_EQ(a[i].has_shape, b[i].has_shape) << what << " '" << a[i].name << "'";
    EXPECT_EQ(a[i].shape, b[i].shape) << what << " '" << a[i].name << "'";
    EXPECT_EQ(a[i].dim_names, b[i].dim_names) << what << " '" << a[i].name << "'";
  }
}

// Every field of the IR: model metadata, nodes in order with attributes, graph values, initializers bitwise.
inline void expect_same_model(const Model& a, const Model& b, const std::string& what) {
  EXPECT_EQ(a.ir_version, b.ir_version) << what;
  ASSERT_EQ(a.opsets.size(), b.opsets.size()) << what;
  for (size_t i = 0; i < a.opsets.size(); ++i) {
    EXPECT_EQ(a.opsets[i].domain, b.opsets[i].domain) << what;
    EXPECT_EQ(a.opsets[i].version, b.opsets[i].version) << what;
  }
  EXPECT_EQ(a.producer_name, b.producer_name) << what;
  EXPECT_EQ(a.producer_version, b.producer_version) << what;
  EXPECT_EQ(a.domain, b.domain) << what;
  EXPECT_EQ(a.model_version, b.model_version) << what;
  EXPECT_EQ(a.doc_string, b.doc_string) << what;
  EXPECT_EQ(a.metadata, b.metadata) << what;
  EXPECT_EQ(a.graph.name, b.graph.name) << what;
  ASSERT_EQ(a.graph.nodes.size(), b.graph.nodes.size()) << what;
  for (size_t i = 0; i < a.graph.nodes.size(); ++i) {
    const Node &x = a.graph.nodes[i], &y = b.graph.nodes[i];
    const std::string w = what + ": node " + std::to_string(i) + " " + x.describe();
    EXPECT_EQ(x.name, y.name) << w;
    EXPECT_EQ(x.op_type, y.op_type) << w;
    EXPECT_EQ(x.domain, y.domain) << w;
    EXPECT_EQ(x.inputs, y.inputs) << w;
    EXPECT_EQ(x.captured, y.captured) << w;
    EXPECT_EQ(x.outputs, y.outputs) << w;
    ASSERT_EQ(x.attrs.size(), y.attrs.size()) << w;
    for (const auto& [k, v] : x.attrs) {
      auto it = y.attrs.find(k);
      ASSERT_NE(it, y.attrs.end()) << w << " lost attribute " << k;
      EXPECT_TRUE(same_attr(v, it->second)) << w << " attribute " << k << " changed";
    }
  }
  expect_same_value_infos(a.graph.inputs, b.graph.inputs, what + ": inputs");
  expect_same_value_infos(a.graph.outputs, b.graph.outputs, what + ": outputs");
  expect_same_value_infos(a.graph.value_info, b.graph.value_info, what + ": value_info");
  ASSERT_EQ(a.graph.initializers.size(), b.graph.initializers.size()) << what;
  for (const auto& [k, t] : a.graph.initializers) {
    auto it = b.graph.initializers.find(k);
    ASSERT_NE(it, b.graph.initializers.end()) << what << " lost initializer " << k;
    EXPECT_TRUE(same_tensor(t, it->second)) << what << " initializer " << k << " is not bit-identical";
  }
}

}  // namespace perch::graph::test
