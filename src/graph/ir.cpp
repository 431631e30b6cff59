#include "perch/graph/ir.h"

#include <algorithm>
#include <set>
#include <unordered_set>
#include <unordered_map>

namespace perch::graph {

namespace {
template <typename T>
const T* get_attr(const Node& n, const std::string& key) {
  auto it = n.attrs.find(key);
  if (it == n.attrs.end()) return nullptr;
  const T* v = std::get_if<T>(&it->second);
  PERCH_CHECK(v, n.describe(), ": attribute '", key, "' has an unexpected type");
  return v;
}
}  // namespace

int64_t Node::attr_int(const std::string& key, int64_t dflt) const {
  const auto* v = get_attr<int64_t>(*this, key);
  return v ? *v : dflt;
}
float Node::attr_float(const std::string& key, float dflt) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return dflt;
  if (const auto* i = std::get_if<int64_t>(&it->second)) return static_cast<float>(*i);
  const auto* v = get_attr<float>(*this, key);
  return *v;
}
std::string Node::attr_string(const std::string& key, const std::string& dflt) const {
  const auto* v = get_attr<std::string>(*this, key);
  return v ? *v : dflt;
}
std::vector<int64_t> Node::attr_ints(const std::string& key, const std::vector<int64_t>& dflt) const {
  const auto* v = get_attr<std::vector<int64_t>>(*this, key);
  return v ? *v : dflt;
}
std::vector<float> Node::attr_floats(const std::string& key, const std::vector<float>& dflt) const {
  const auto* v = get_attr<std::vector<float>>(*this, key);
  return v ? *v : dflt;
}
const Tensor* Node::attr_tensor(const std::string& key) const { return get_attr<Tensor>(*this, key); }

const Graph* Node::attr_graph(const std::string& key) const {
  const GraphRef* g = get_attr<GraphRef>(*this, key);
  return g ? g->get() : nullptr;
}

std::vector<std::pair<std::string, const Graph*>> Node::subgraphs() const {
  std::vector<std::pair<std::string, const Graph*>> out;
  for (const auto& [key, v] : attrs)
    if (const auto* g = std::get_if<GraphRef>(&v)) out.emplace_back(key, g->get());
  return out;
}

std::vector<std::string> outer_references(const Graph& g) {
  std::set<std::string> defined;
  for (const auto& in : g.inputs) defined.insert(in.name);
  for (const auto& [k, v] : g.initializers) defined.insert(k);
  for (const auto& n : g.nodes)
    for (const auto& o : n.outputs) defined.insert(o);
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto use = [&](const std::string& v) {
    if (!v.empty() && !defined.count(v) && seen.insert(v).second) out.push_back(v);
  };
  for (const auto& n : g.nodes)
    for (const auto& in : n.inputs) use(in);
  for (const auto& o : g.outputs) use(o.name);
  return out;
}

std::string Node::describe() const {
  return op_type + " node '" + (name.empty() ? (outputs.empty() ? std::string("?") : "->" + outputs[0]) : name) + "'";
}

std::string Node::prefixed(const std::string& message) const {
  std::string out = describe();
  if (message.rfind(out, 0) == 0) return message;
  out.append(": ").append(message);
  return out;
}

const std::string& Node::input(size_t i) const {
  static const std::string kEmpty;
  return i < inputs.size() ? inputs[i] : kEmpty;
}

const Tensor* Graph::initializer(const std::string& v) const {
  auto it = initializers.find(v);
  return it == initializers.end() ? nullptr : &it->second;
}

int64_t Graph::producer(const std::string& v) const {
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs)
      if (o == v) return static_cast<int64_t>(i);
  return -1;
}

std::vector<size_t> Graph::consumers(const std::string& v) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (std::find(nodes[i].inputs.begin(), nodes[i].inputs.end(), v) != nodes[i].inputs.end()) out.push_back(i);
  return out;
}

bool Graph::is_graph_output(const std::string& v) const {
  return std::any_of(outputs.begin(), outputs.end(), [&](const ValueInfo& o) { return o.name == v; });
}

void Graph::toposort() {
  // Kahn's algorithm, stable: among ready nodes the earliest in the current order goes first.
  std::unordered_map<std::string, size_t> producer_of;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& o : nodes[i].outputs) {
      if (o.empty()) continue;
      PERCH_CHECK(!producer_of.count(o), "graph '", name, "': value '", o, "' is produced by two nodes (",
                  nodes[producer_of[o]].describe(), " and ", nodes[i].describe(), ")");
      producer_of[o] = i;
    }
  std::set<std::string> available;
  for (const auto& in : inputs) available.insert(in.name);
  for (const auto& [k, v] : initializers) available.insert(k);
  std::vector<int> missing(nodes.size(), 0);
  std::vector<std::vector<size_t>> users(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const auto& in : nodes[i].inputs) {
      if (in.empty() || available.count(in)) continue;
      auto it = producer_of.find(in);
      PERCH_CHECK(it != producer_of.end(), "graph '", name, "': ", nodes[i].describe(), " reads '", in,
                  "', which is neither a graph input, an initializer nor produced by any node");
      ++missing[i];
      users[it->second].push_back(i);
    }
  }
  std::set<size_t> ready;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (missing[i] == 0) ready.insert(i);
  std::vector<size_t> order;
  while (!ready.empty()) {
    size_t i = *ready.begin();
    ready.erase(ready.begin());
    order.push_back(i);
    for (size_t u : users[i])
      if (--missing[u] == 0) ready.insert(u);
  }
  if (order.size() != nodes.size()) {
    // Some nodes are blocked. A blocked node may only sit downstream of a cycle, so walk from one to a
    // blocked producer of one of its inputs (every blocked node has one) until a node repeats: that node is
    // on a cycle, and the walk from its first visit is the cycle itself.
    size_t i = 0;
    while (missing[i] == 0) ++i;
    std::vector<size_t> path;
    std::vector<int64_t> pos(nodes.size(), -1);
    while (pos[i] < 0) {
      pos[i] = static_cast<int64_t>(path.size());
      path.push_back(i);
      for (const auto& in : nodes[i].inputs) {
        auto it = in.empty() || available.count(in) ? producer_of.end() : producer_of.find(in);
        if (it != producer_of.end() && missing[it->second] > 0) {
          i = it->second;
          break;
        }
      }
    }
    std::string cycle;
    for (size_t k = static_cast<size_t>(pos[i]); k < path.size(); ++k) cycle += nodes[path[k]].describe() + " -> ";
    PERCH_FAIL("graph '", name, "' has a cycle through ", nodes[i].describe(), " (", cycle, nodes[i].describe(), ")");
  }
  std::vector<Node> sorted;
  sorted.reserve(nodes.size());
  for (size_t i : order) sorted.push_back(std::move(nodes[i]));
  nodes = std::move(sorted);
}

std::string Graph::unique_name(const std::string& base) const {
  // Only names that start with `base` can equal base or base_K: one pass collects them (building a set of
  // every name on each call made inserting Q/DQ pairs quadratic in the graph size).
  std::unordered_set<std::string> taken;
  auto see = [&](const std::string& s) {
    if (s.size() >= base.size() && s.compare(0, base.size(), base) == 0) taken.insert(s);
  };
  for (const auto& n : nodes) {
    see(n.name);
    for (const auto& i : n.inputs) see(i);
    for (const auto& o : n.outputs) see(o);
  }
  for (const auto& i : inputs) see(i.name);
  for (const auto& [k, v] : initializers) see(k);
  if (!taken.count(base)) return base;
  for (int i = 1;; ++i) {
    std::string c = base + "_" + std::to_string(i);
    if (!taken.count(c)) return c;
  }
}

void Graph::prune_unused_initializers() {
  std::set<std::string> used;
  for (const auto& n : nodes) used.insert(n.inputs.begin(), n.inputs.end());
  for (const auto& o : outputs) used.insert(o.name);
  for (auto it = initializers.begin(); it != initializers.end();) {
    if (!used.count(it->first))
      it = initializers.erase(it);
    else
      ++it;
  }
}

int64_t Model::opset() const {
  for (const auto& o : opsets)
    if (o.domain.empty() || o.domain == "ai.onnx") return o.version;
  return 0;
}

void Model::set_opset(int64_t version) {
  for (auto& o : opsets)
    if (o.domain.empty() || o.domain == "ai.onnx") {
      o.version = version;
      return;
    }
  opsets.push_back({"", version});
}

}  // namespace perch::graph
