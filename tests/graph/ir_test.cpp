// Graph IR: toposort on shuffled graphs (valid order, same nodes, stable on sorted input), cycle and
// undefined-value errors that name a node, and the small queries passes rely on.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>

#include "graph_test_util.h"
#include "perch/graph/ir.h"

namespace perch::graph {
namespace {

using test::make_node;
using test::make_value;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A random DAG: graph input "x", initializer "w", and `n` nodes where node i reads 1..3 values chosen among
// x, w and the outputs of nodes < i (sometimes an omitted optional input ""), and writes "v<i>".
Graph random_dag(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  Graph g;
  g.name = "dag";
  g.inputs.push_back(make_value("x", {1}));
  g.initializers["w"] = Tensor(DType::kFloat32, {1});
  std::vector<std::string> avail = {"x", "w"};
  for (int i = 0; i < n; ++i) {
    Node node = make_node("Op", {}, {"v" + std::to_string(i)}, "n" + std::to_string(i));
    const int k = 1 + static_cast<int>(rng() % 3);
    for (int j = 0; j < k; ++j) node.inputs.push_back(rng() % 7 == 0 ? "" : avail[rng() % avail.size()]);
    g.nodes.push_back(node);
    avail.push_back(node.outputs[0]);
  }
  g.outputs.push_back(make_value(avail.back(), {1}));
  return g;
}

// Every input of every node is available before it (graph input, initializer, omitted, or produced earlier).
::testing::AssertionResult is_topological(const Graph& g) {
  std::set<std::string> have;
  for (const auto& v : g.inputs) have.insert(v.name);
  for (const auto& [k, v] : g.initializers) have.insert(k);
  for (const auto& n : g.nodes) {
    for (const auto& in : n.inputs)
      if (!in.empty() && !have.count(in))
        return ::testing::AssertionFailure() << n.describe() << " reads '" << in << "' before it is produced";
    have.insert(n.outputs.begin(), n.outputs.end());
  }
  return ::testing::AssertionSuccess();
}

std::multiset<std::string> node_names(const Graph& g) {
  std::multiset<std::string> s;
  for (const auto& n : g.nodes) s.insert(n.name);
  return s;
}

TEST(GraphToposort, ShuffledDagsComeBackInValidOrder) {
  for (uint32_t seed = 1; seed <= 50; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const Graph sorted = random_dag(25, seed);
    ASSERT_TRUE(is_topological(sorted));
    Graph g = sorted;
    std::mt19937 rng(seed * 7919u);
    std::shuffle(g.nodes.begin(), g.nodes.end(), rng);
    g.toposort();
    EXPECT_TRUE(is_topological(g));
    EXPECT_EQ(node_names(g), node_names(sorted));
    // Each node keeps its own inputs/outputs (nodes are moved whole, not rewired).
    std::map<std::string, const Node*> by_name;
    for (const auto& n : sorted.nodes) by_name[n.name] = &n;
    for (const auto& n : g.nodes) {
      EXPECT_EQ(n.inputs, by_name.at(n.name)->inputs) << n.name;
      EXPECT_EQ(n.outputs, by_name.at(n.name)->outputs) << n.name;
    }
  }
}

TEST(GraphToposort, StableOnAlreadySortedGraphs) {
  // Two independent chains interleaved: a valid order that a non-stable sort would regroup.
  Graph g;
  g.inputs = {make_value("x", {1})};
  g.nodes = {make_node("Relu", {"x"}, {"a1"}, "a1"), make_node("Neg", {"x"}, {"b1"}, "b1"),
             make_node("Relu", {"a1"}, {"a2"}, "a2"), make_node("Neg", {"b1"}, {"b2"}, "b2"),
             make_node("Add", {"a2", "b2"}, {"y"}, "sum")};
  g.outputs = {make_value("y", {1})};
  const auto before = g.nodes;
  g.toposort();
  ASSERT_EQ(g.nodes.size(), before.size());
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(g.nodes[i].name, before[i].name);
}

TEST(GraphToposort, CycleErrorNamesANodeOnTheCycle) {
  // c1 -> c2 -> c3 -> c1 is a cycle; "after" only depends on it and "free" is independent. Whatever the
  // order, the message must name a node that is on the cycle, not one merely blocked behind it.
  const std::set<std::string> on_cycle = {"c1", "c2", "c3"};
  for (uint32_t seed = 0; seed < 24; ++seed) {
    Graph g;
    g.name = "cyclic";
    g.inputs = {make_value("x", {1})};
    g.nodes = {make_node("Add", {"x", "o3"}, {"o1"}, "c1"), make_node("Relu", {"o1"}, {"o2"}, "c2"),
               make_node("Relu", {"o2"}, {"o3"}, "c3"), make_node("Neg", {"o3"}, {"o4"}, "after"),
               make_node("Neg", {"x"}, {"o5"}, "free")};
    g.outputs = {make_value("o4", {1})};
    std::mt19937 rng(seed);
    std::shuffle(g.nodes.begin(), g.nodes.end(), rng);
    if (seed == 0) std::rotate(g.nodes.begin(), std::find_if(g.nodes.begin(), g.nodes.end(), [](const Node& n) {
                                 return n.name == "after";
                               }), g.nodes.end());  // "after" first
    const std::string e = error_of([&] { g.toposort(); });
    ASSERT_NE(e, "") << "seed " << seed << ": cycle not detected";
    EXPECT_NE(e.find("cycle"), std::string::npos) << e;
    EXPECT_NE(e.find("'cyclic'"), std::string::npos) << e;
    bool names_cycle_node = false;
    for (const auto& c : on_cycle) names_cycle_node |= e.find("node '" + c + "'") != std::string::npos;
    EXPECT_TRUE(names_cycle_node) << "seed " << seed << ": " << e;
    EXPECT_EQ(e.find("'after'"), std::string::npos) << "names a node that is only downstream of the cycle: " << e;
  }
}

TEST(GraphToposort, SelfLoopIsACycle) {
  Graph g;
  g.inputs = {make_value("x", {1})};
  g.nodes = {make_node("Add", {"x", "s"}, {"s"}, "self")};
  const std::string e = error_of([&] { g.toposort(); });
  EXPECT_NE(e.find("cycle"), std::string::npos) << e;
  EXPECT_NE(e.find("'self'"), std::string::npos) << e;
}

TEST(GraphToposort, UndefinedInputAndDoubleProducerAreNamed) {
  Graph g;
  g.name = "g";
  g.inputs = {make_value("x", {1})};
  g.nodes = {make_node("Relu", {"x"}, {"a"}, "ok"), make_node("Add", {"a", "ghost"}, {"y"}, "reader")};
  std::string e = error_of([&] { g.toposort(); });
  EXPECT_NE(e.find("'reader'"), std::string::npos) << e;
  EXPECT_NE(e.find("'ghost'"), std::string::npos) << e;

  g.nodes = {make_node("Relu", {"x"}, {"a"}, "first"), make_node("Neg", {"x"}, {"a"}, "second")};
  e = error_of([&] { g.toposort(); });
  EXPECT_NE(e.find("'a'"), std::string::npos) << e;
  EXPECT_NE(e.find("'first'"), std::string::npos) << e;
  EXPECT_NE(e.find("'second'"), std::string::npos) << e;
}

TEST(GraphQueries, ProducerConsumersUniqueNamePrune) {
  Graph g;
  g.inputs = {make_value("x", {1})};
  g.initializers["w"] = Tensor(DType::kFloat32, {1});
  g.initializers["unused"] = Tensor(DType::kFloat32, {1});
  g.initializers["out_const"] = Tensor(DType::kFloat32, {1});
  g.nodes = {make_node("Mul", {"x", "w"}, {"a"}, "mul"), make_node("Relu", {"a"}, {"b"}, "relu"),
             make_node("Add", {"a", "b"}, {"y"}, "add")};
  g.outputs = {make_value("y", {1}), make_value("out_const", {1})};
  EXPECT_EQ(g.producer("a"), 0);
  EXPECT_EQ(g.producer("y"), 2);
  EXPECT_EQ(g.producer("x"), -1);
  EXPECT_EQ(g.consumers("a"), (std::vector<size_t>{1, 2}));
  EXPECT_TRUE(g.consumers("y").empty());
  EXPECT_TRUE(g.is_graph_output("y"));
  EXPECT_FALSE(g.is_graph_output("a"));
  EXPECT_EQ(g.unique_name("fresh"), "fresh");
  for (const char* used : {"x", "w", "a", "mul"}) {
    const std::string u = g.unique_name(used);
    EXPECT_NE(u, used);
    EXPECT_EQ(u.rfind(used, 0), 0u) << u;
  }
  g.prune_unused_initializers();
  EXPECT_TRUE(g.is_initializer("w"));
  EXPECT_TRUE(g.is_initializer("out_const")) << "an initializer that is a graph output is used";
  EXPECT_FALSE(g.is_initializer("unused"));
}

TEST(NodeAttrs, TypedAccessorsDefaultsAndTypeErrors) {
  Node n = make_node("Conv", {}, {"y"}, "c");
  n.attrs["group"] = int64_t{4};
  n.attrs["alpha"] = 0.5f;
  n.attrs["pads"] = std::vector<int64_t>{1, 2, 3, 4};
  EXPECT_EQ(n.attr_int("group", 1), 4);
  EXPECT_EQ(n.attr_int("missing", 7), 7);
  EXPECT_EQ(n.attr_float("alpha", 0), 0.5f);
  EXPECT_EQ(n.attr_float("group", 0), 4.0f) << "an int attribute read as float converts";
  EXPECT_EQ(n.attr_ints("pads"), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(n.attr_tensor("value"), nullptr);
  const std::string e = error_of([&] { (void)n.attr_int("alpha", 0); });
  EXPECT_NE(e.find("Conv node 'c'"), std::string::npos) << e;
  EXPECT_NE(e.find("'alpha'"), std::string::npos) << e;
}

}  // namespace
}  // namespace perch::graph
