#include "model_diff.h"

#include <cstring>
#include <map>
#include <set>
#include <type_traits>
#include <variant>

namespace perch::ptq::detail {

using graph::Model;
using graph::Node;

bool same_tensor(const Tensor& a, const Tensor& b) {
  if (a.raw() == b.raw() && a.shape() == b.shape()) return true;
  return a.dtype() == b.dtype() && a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

bool same_attrs(const Node& a, const Node& b) {
  if (a.attrs.size() != b.attrs.size()) return false;
  for (const auto& [k, v] : a.attrs) {
    auto it = b.attrs.find(k);
    if (it == b.attrs.end() || it->second.index() != v.index()) return false;
    const bool same = std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          const T& y = std::get<T>(it->second);
          if constexpr (std::is_same_v<T, Tensor>) return same_tensor(x, y);
          else return x == y;
        },
        v);
    if (!same) return false;
  }
  return true;
}

std::vector<std::string> clean_outputs(const Model& base, const Model& variant) {
  std::map<std::string, const Node*> base_by_output;
  for (const auto& n : base.graph.nodes)
    for (const auto& o : n.outputs) base_by_output[o] = &n;
  std::set<std::string> clean;
  for (const auto& in : variant.graph.inputs) clean.insert(in.name);
  std::vector<std::string> out;
  for (const auto& n : variant.graph.nodes) {
    auto it = n.outputs.empty() ? base_by_output.end() : base_by_output.find(n.outputs[0]);
    if (it == base_by_output.end()) continue;
    const Node& b = *it->second;
    if (b.op_type != n.op_type || b.inputs != n.inputs || b.outputs != n.outputs || !same_attrs(b, n)) continue;
    bool ok = true;
    for (const auto& in : n.inputs) {
      if (in.empty() || clean.count(in)) continue;
      const Tensor* tv = variant.graph.initializer(in);
      const Tensor* tb = base.graph.initializer(in);
      if (tv && tb && same_tensor(*tv, *tb)) continue;
      ok = false;
      break;
    }
    if (!ok) continue;
    for (const auto& o : n.outputs)
      if (!o.empty()) {
        clean.insert(o);
        out.push_back(o);
      }
  }
  return out;
}

}  // namespace perch::ptq::detail
