// Einsum (opset 12) for the float executor: any numeric type, any number of operands.
//
// The equation names each operand's dims by letters (case-sensitive), "..." standing for the dims no letter names
// (broadcast across operands as NumPy does, aligned on the right); "->" gives the output's letters, otherwise the
// output is the "..." dims followed by the letters used exactly once, in ASCII order (NumPy's implicit mode).
// A letter repeated within an operand takes its diagonal; a letter absent from the output is summed over. A letter
// of size 1 in one operand broadcasts against the others.
//
// Evaluation: each operand first drops the letters no other operand and not the output uses (summed); the operands
// are then contracted left to right, each pair as a batched matrix product — batch = letters both have and that are
// still needed, M / N = letters only one of them has, K = letters both have and nothing later needs —
// on kernels::gemm_f32 for float32 (float accumulation), in double for the other types (integers exact below 2^53).
// The result is summed / transposed into the output's order and stored in the input type.
#include <algorithm>
#include <cctype>
#include <map>
#include <string>

#include "ops_typed.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

constexpr int kEllipsisLabel = 256;  // the j-th broadcast "..." dim is label 256 + j; letters are their ASCII codes

// An operand as values in the working type W and one label per dim.
template <typename W>
struct Labelled {
  std::vector<W> v;
  std::vector<int> labels;
  Shape dims;
};

bool contains(const std::vector<int>& v, int x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// a re-indexed by `to` (distinct labels; extents from `size`): out[i_to] = Σ over a's other labels of a[…], where a
// dim repeated in a reads its diagonal and a dim of extent 1 in a broadcasts.
template <typename W>
Labelled<W> relabel(const Labelled<W>& a, const std::vector<int>& to, const std::map<int, int64_t>& size) {
  std::vector<int> loop = to;
  for (int l : a.labels)
    if (!contains(loop, l)) loop.push_back(l);
  const auto src_strides = detail::strides_of(a.dims);
  Labelled<W> out;
  out.labels = to;
  for (int l : to) out.dims.push_back(size.at(l));
  const auto dst_strides = detail::strides_of(out.dims);
  Shape ext;
  std::vector<int64_t> ss, ds;
  for (size_t k = 0; k < loop.size(); ++k) {
    const int l = loop[k];
    const int64_t e = size.at(l);
    int64_t s = 0;
    for (size_t p = 0; p < a.labels.size(); ++p)
      if (a.labels[p] == l && a.dims[p] != 1) s += src_strides[p];
    ext.push_back(e);
    ss.push_back(s);
    ds.push_back(k < to.size() ? dst_strides[k] : 0);
  }
  out.v.assign(static_cast<size_t>(checked_numel(out.dims, "Einsum intermediate")), W(0));
  for (detail::Walker w(ext, {ss, ds}); w.valid(); w.next())  // no iteration when an extent is 0
    out.v[static_cast<size_t>(w.offset(1))] += a.v[static_cast<size_t>(w.offset(0))];
  return out;
}

int64_t product(const std::vector<int>& labels, const std::map<int, int64_t>& size) {
  int64_t p = 1;
  for (int l : labels) p *= size.at(l);
  return p;
}

// The pairwise contraction: result labels = batch, then a's free labels, then b's.
template <typename W>
Labelled<W> contract(const Labelled<W>& a, const Labelled<W>& b, const std::vector<int>& needed,
                     const std::map<int, int64_t>& size) {
  std::vector<int> batch, left, right, sum;
  for (int l : a.labels) {
    if (contains(batch, l) || contains(left, l) || contains(sum, l)) continue;
    if (contains(b.labels, l)) (contains(needed, l) ? batch : sum).push_back(l);
    else if (contains(needed, l)) left.push_back(l);
  }
  for (int l : b.labels)
    if (!contains(a.labels, l) && contains(needed, l) && !contains(right, l)) right.push_back(l);
  std::vector<int> ta = batch, tb = batch;
  ta.insert(ta.end(), left.begin(), left.end());
  ta.insert(ta.end(), sum.begin(), sum.end());
  tb.insert(tb.end(), sum.begin(), sum.end());
  tb.insert(tb.end(), right.begin(), right.end());
  const Labelled<W> A = relabel(a, ta, size), B = relabel(b, tb, size);
  const int64_t nb = product(batch, size), M = product(left, size), K = product(sum, size), N = product(right, size);
  Labelled<W> out;
  out.labels = batch;
  out.labels.insert(out.labels.end(), left.begin(), left.end());
  out.labels.insert(out.labels.end(), right.begin(), right.end());
  for (int l : out.labels) out.dims.push_back(size.at(l));
  out.v.assign(static_cast<size_t>(checked_numel(out.dims, "Einsum intermediate")), W(0));
  if (M == 0 || N == 0 || K == 0) return out;
  for (int64_t i = 0; i < nb; ++i) {
    const W* pa = A.v.data() + i * M * K;
    const W* pb = B.v.data() + i * K * N;
    W* pc = out.v.data() + i * M * N;
    if constexpr (std::is_same_v<W, float>) {
      kernels::GemmF32Args g;
      g.m = M, g.n = N, g.k = K;
      g.a = pa, g.lda = K, g.b = pb, g.ldb = N, g.c = pc, g.ldc = N;
      kernels::gemm_f32(g);
    } else {
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k) {
          const W x = pa[m * K + k];
          for (int64_t n = 0; n < N; ++n) pc[m * N + n] += x * pb[k * N + n];
        }
    }
  }
  return out;
}

struct Equation {
  std::vector<std::vector<int>> inputs;
  std::vector<int> output;
};

// Labels of the equation's terms, the "..." dims numbered from the broadcast shape's left.
Equation parse(const std::string& raw, const std::vector<const Tensor*>& ops) {
  std::string eq;
  for (char c : raw)
    if (c != ' ') eq += c;
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  std::vector<std::string> terms;
  for (size_t start = 0;;) {
    const size_t comma = lhs.find(',', start);
    terms.push_back(lhs.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  PERCH_CHECK(terms.size() == ops.size(), "equation '", raw, "' has ", terms.size(), " operand terms for ", ops.size(),
              " inputs");
  // How many dims each term's "..." covers; the broadcast "..." has the most.
  auto letters_of = [&](const std::string& t, bool& ellipsis) {
    std::vector<int> ls;
    ellipsis = false;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t.compare(i, 3, "...") == 0) {
        PERCH_CHECK(!ellipsis, "equation '", raw, "': '...' twice in term '", t, "'");
        ellipsis = true;
        ls.push_back(-1);
        i += 2;
        continue;
      }
      PERCH_CHECK(std::isalpha(static_cast<unsigned char>(t[i])), "equation '", raw, "': '", t[i], "' is not a letter");
      ls.push_back(static_cast<unsigned char>(t[i]));
    }
    return ls;
  };
  Equation e;
  std::vector<int64_t> ell_dims(terms.size(), 0);
  int64_t E = 0;
  std::vector<std::vector<int>> raw_labels;
  for (size_t k = 0; k < terms.size(); ++k) {
    bool ell = false;
    raw_labels.push_back(letters_of(terms[k], ell));
    const int64_t named = static_cast<int64_t>(raw_labels[k].size()) - (ell ? 1 : 0);
    PERCH_CHECK(ell ? ops[k]->rank() >= named : ops[k]->rank() == named, "equation '", raw, "': term '", terms[k],
                "' names ", named, " dims of input ", k, ", which has rank ", ops[k]->rank());
    ell_dims[k] = ell ? ops[k]->rank() - named : 0;
    E = std::max(E, ell_dims[k]);
  }
  auto expand = [&](const std::vector<int>& ls, int64_t n) {
    std::vector<int> out;
    for (int l : ls) {
      if (l >= 0) {
        out.push_back(l);
        continue;
      }
      for (int64_t j = 0; j < n; ++j) out.push_back(kEllipsisLabel + static_cast<int>(E - n + j));
    }
    return out;
  };
  for (size_t k = 0; k < terms.size(); ++k) e.inputs.push_back(expand(raw_labels[k], ell_dims[k]));
  if (arrow != std::string::npos) {
    bool ell = false;
    const auto ls = letters_of(eq.substr(arrow + 2), ell);
    e.output = expand(ls, E);
    for (int l : e.output) {
      PERCH_CHECK(std::count(e.output.begin(), e.output.end(), l) == 1, "equation '", raw, "': output label '",
                  static_cast<char>(l), "' repeated");
      bool found = false;
      for (const auto& t : e.inputs) found = found || contains(t, l);
      PERCH_CHECK(found || l >= kEllipsisLabel, "equation '", raw, "': output label '", static_cast<char>(l),
                  "' is in no input");
    }
  } else {
    for (int64_t j = 0; j < E; ++j) e.output.push_back(kEllipsisLabel + static_cast<int>(j));
    std::map<int, int> count;
    for (const auto& t : e.inputs)
      for (int l : t)
        if (l < kEllipsisLabel) ++count[l];
    for (const auto& [l, c] : count)
      if (c == 1) e.output.push_back(l);
  }
  return e;
}

template <typename T, typename W>
Tensor einsum_typed(const std::string& raw, const Equation& e, const std::vector<const Tensor*>& ops) {
  std::map<int, int64_t> size;
  for (size_t k = 0; k < ops.size(); ++k)
    for (size_t p = 0; p < e.inputs[k].size(); ++p) {
      const int l = e.inputs[k][p];
      const int64_t d = ops[k]->dim(static_cast<int64_t>(p));
      auto it = size.find(l);
      if (it == size.end() || it->second == 1) {
        size[l] = d;
      } else {
        PERCH_CHECK(d == it->second || d == 1, "equation '", raw, "': label ",
                    l >= kEllipsisLabel ? std::string("'...'") : std::string("'") + static_cast<char>(l) + "'",
                    " has sizes ", it->second, " and ", d);
      }
    }
  for (int l : e.output) size.emplace(l, 1);
  std::vector<Labelled<W>> ls;
  for (size_t k = 0; k < ops.size(); ++k) {
    Labelled<W> x;
    x.labels = e.inputs[k];
    x.dims = ops[k]->shape();
    const T* d = ops[k]->data<T>();
    x.v.assign(d, d + ops[k]->numel());
    ls.push_back(std::move(x));
  }
  // Labels still needed once operands 0..k-1 are contracted: the output's and those of operands k and later.
  auto needed_from = [&](size_t k) {
    std::vector<int> need = e.output;
    for (size_t j = k; j < ls.size(); ++j) need.insert(need.end(), ls[j].labels.begin(), ls[j].labels.end());
    return need;
  };
  // Each operand alone: drop (sum) the labels no one else needs, take diagonals.
  for (size_t k = 0; k < ls.size(); ++k) {
    std::vector<int> others = e.output;
    for (size_t j = 0; j < ls.size(); ++j)
      if (j != k) others.insert(others.end(), ls[j].labels.begin(), ls[j].labels.end());
    std::vector<int> keep;
    for (int l : ls[k].labels)
      if (contains(others, l) && !contains(keep, l)) keep.push_back(l);
    if (keep != ls[k].labels) ls[k] = relabel(ls[k], keep, size);
  }
  Labelled<W> acc = std::move(ls[0]);
  for (size_t k = 1; k < ls.size(); ++k) acc = contract(acc, ls[k], needed_from(k + 1), size);
  const Labelled<W> out = relabel(acc, e.output, size);
  Tensor y = Tensor::uninitialized(dtype_of<T>(), out.dims);
  T* yd = y.data<T>();
  for (size_t i = 0; i < out.v.size(); ++i) yd[i] = static_cast<T>(out.v[i]);
  return y;
}

std::vector<Tensor> einsum(const Node& n, const Args& a, int64_t) {
  PERCH_CHECK(!a.empty(), "needs at least one input");
  std::vector<const Tensor*> ops;
  for (size_t i = 0; i < a.size(); ++i) ops.push_back(&in(n, a, i));
  for (const Tensor* t : ops) PERCH_CHECK(t->dtype() == ops[0]->dtype(), "inputs must share one type");
  const std::string raw = n.attr_string("equation", "");
  PERCH_CHECK(!raw.empty(), "needs an equation");
  const Equation e = parse(raw, ops);
  return {detail::visit_dtype(ops[0]->dtype(), [&](auto tag) -> Tensor {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      PERCH_FAIL("bool inputs are not numeric");
    } else if constexpr (std::is_same_v<T, float>) {
      return einsum_typed<float, float>(raw, e, ops);
    } else {
      return einsum_typed<T, double>(raw, e, ops);
    }
  })};
}

}  // namespace

void register_einsum_ops(OpRegistry& r) { r.add("Einsum", 12, einsum); }

}  // namespace perch::runtime
