#include "perch/core/tensor.h"

#include <malloc.h>
#include <sys/mman.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <type_traits>
#include <vector>

namespace perch {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kInt8: return 1;
    case DType::kUInt8: return 1;
    case DType::kInt16: return 2;
    case DType::kUInt16: return 2;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
    case DType::kBool: return 1;
    case DType::kFloat16: return 2;
    case DType::kBFloat16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kInt8: return "int8";
    case DType::kUInt8: return "uint8";
    case DType::kInt16: return "int16";
    case DType::kUInt16: return "uint16";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
    case DType::kBool: return "bool";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "?";
}

float half_to_float(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) v = std::ldexp(static_cast<float>(m), -24);  // zero and subnormals: m * 2^-24
  else if (e == 31) v = m ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  else v = std::ldexp(static_cast<float>(1024 + m), e - 25);  // (1 + m/1024) * 2^(e-15)
  return (h & 0x8000) ? -v : v;
}

uint16_t half_from_double(double d) {
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const double a = std::fabs(d);
  if (std::isnan(d))  // quiet, the payload's top 9 bits kept
    return sign | 0x7e00 | static_cast<uint16_t>((std::bit_cast<uint64_t>(d) >> 42) & 0x1ff);
  if (a >= 65520.0) return sign | 0x7c00;
  // Exponent E of a's leading bit; normal halves have E >= -14. Below, the grid is the subnormal one (2^-24).
  int e2 = 0;
  (void)std::frexp(a, &e2);  // a = f * 2^e2, f in [0.5, 1)
  const int E = std::max(e2 - 1, -14);
  // a / 2^(E-10) lies in [0, 2048): its nearest integer (ties to even: the default rounding mode) is the significand
  // with the leading bit (1024 + mantissa, or the subnormal's mantissa); 2048 carries into the exponent.
  double q = std::nearbyint(std::ldexp(a, 10 - E));
  int exp_field = E + 15;
  if (q >= 2048.0) q = 1024.0, ++exp_field;
  if (q < 1024.0) return sign | static_cast<uint16_t>(q);  // subnormal (exp_field 0); q == 1024 is the smallest normal
  if (exp_field >= 31) return sign | 0x7c00;
  return sign | static_cast<uint16_t>(exp_field << 10) | static_cast<uint16_t>(q - 1024.0);
}

float bfloat16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t bfloat16_from_double(double d) {
  const uint16_t sign = std::signbit(d) ? 0x8000 : 0;
  const double a = std::fabs(d);
  if (std::isnan(d))  // quiet, the payload's top 6 bits kept
    return sign | 0x7fc0 | static_cast<uint16_t>((std::bit_cast<uint64_t>(d) >> 45) & 0x3f);
  if (a >= std::ldexp(2.0 - std::ldexp(1.0, -8), 127)) return sign | 0x7f80;
  // As half_from_double, with 7 mantissa bits and normal exponents from -126 (subnormal grid 2^-133).
  int e2 = 0;
  (void)std::frexp(a, &e2);
  const int E = std::max(e2 - 1, -126);
  double q = std::nearbyint(std::ldexp(a, 7 - E));
  int exp_field = E + 127;
  if (q >= 256.0) q = 128.0, ++exp_field;
  if (q < 128.0) return sign | static_cast<uint16_t>(q);
  if (exp_field >= 255) return sign | 0x7f80;
  return sign | static_cast<uint16_t>(exp_field << 7) | static_cast<uint16_t>(q - 128.0);
}

std::string shape_str(const Shape& shape) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? "," : "") << shape[i];
  os << ']';
  return os.str();
}

int64_t checked_numel(const Shape& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    PERCH_CHECK(d >= 0, what, ": negative dimension in shape ", shape_str(shape));
    if (d == 0) return 0;
    PERCH_CHECK(n <= kMaxElements / d, what, ": shape ", shape_str(shape), " has more than 2^34 elements (refused before allocation)");
    n *= d;
  }
  return n;
}

namespace {
// glibc serves large blocks with fresh mmap()s, so every activation tensor of a batch would page-fault
// its memory in anew. Raising the mmap threshold keeps freed blocks in the heap for reuse (measured:
// page faults were half of the float executor's time before this).
const bool g_malloc_tuned = [] {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc ignores values above its 32 MiB maximum
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return true;
}();

// Blocks of kLargeBlock bytes or more. glibc's mmap threshold cannot be raised past 32 MiB, so above it every
// malloc is a fresh mmap() and every free a munmap(): each such tensor is faulted in again page by page (rec
// fp32 at batch 64, whose activations are 40-80 MB, ran 14.1 s per batch instead of 1.6 s; docs/BENCHMARKS.md).
// perch keeps those blocks itself: a freed block goes into a small cache (at most `limit` bytes, the oldest
// freed first when it overflows) and the next request it fits (capacity in [need, need * 3/2]) reuses it.
// Capacities are rounded up to 2 MiB, and the blocks are 2 MiB aligned and advised as transparent huge
// pages, so a first touch faults 2 MiB at a time where the kernel allows it. Under AddressSanitizer the cache is
// off (reused blocks would hide use-after-free).
constexpr size_t kLargeBlock = size_t{32} << 20;
constexpr size_t kHugePage = size_t{2} << 20;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kCacheAllowed = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kCacheAllowed = false;
#else
constexpr bool kCacheAllowed = true;
#endif
#else
constexpr bool kCacheAllowed = true;
#endif

class LargeBlockCache {
 public:
  LargeBlockCache() {
    size_t mb = 512;
    if (const char* e = std::getenv("PERCH_TENSOR_CACHE_MB"); e && *e) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(e, &end, 10);
      PERCH_CHECK(end && *end == '\0' && v < (1ull << 40), "PERCH_TENSOR_CACHE_MB: expected a number of MiB, got '",
                  e, "'");
      mb = static_cast<size_t>(v);
    }
    limit_ = kCacheAllowed ? mb << 20 : 0;
  }

  // A block of `capacity` bytes (a multiple of kHugePage), cached or new; nullptr when out of memory.
  void* take(size_t capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = blocks_.size();
      for (size_t i = 0; i < blocks_.size(); ++i)
        if (blocks_[i].capacity >= capacity && blocks_[i].capacity - capacity <= capacity / 2 &&
            (best == blocks_.size() || blocks_[i].capacity < blocks_[best].capacity))
          best = i;
      if (best != blocks_.size()) {
        void* p = blocks_[best].ptr;
        cached_ -= blocks_[best].capacity;
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(best));
        ++hits_;
        return p;
      }
      ++misses_;
    }
    void* p = std::aligned_alloc(kHugePage, capacity);
    if (p) madvise(p, capacity, MADV_HUGEPAGE);  // advice only: ignored where THP is off
    return p;
  }

  void give(void* p, size_t capacity) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (capacity > limit_) {
        drop.push_back(p);
      } else {
        blocks_.push_back({p, capacity});
        cached_ += capacity;
        size_t n = 0;
        while (cached_ > limit_) {
          cached_ -= blocks_[n].capacity;
          drop.push_back(blocks_[n++].ptr);
        }
        blocks_.erase(blocks_.begin(), blocks_.begin() + static_cast<std::ptrdiff_t>(n));
      }
    }
    for (void* q : drop) std::free(q);
  }

  void release() {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(blocks_);
      cached_ = 0;
    }
    for (const Block& b : drop) std::free(b.ptr);
  }

  TensorCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {hits_, misses_, cached_, limit_};
  }

 private:
  struct Block {
    void* ptr;
    size_t capacity;
  };
  std::mutex mu_;
  std::vector<Block> blocks_;  // oldest first
  size_t cached_ = 0, limit_ = 0;
  uint64_t hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors held by other static objects may be freed after this file's statics are gone.
LargeBlockCache& large_blocks() {
  static LargeBlockCache* cache = new LargeBlockCache;
  return *cache;
}

std::shared_ptr<std::byte[]> allocate(size_t bytes, bool zero) {
  (void)g_malloc_tuned;
  size_t rounded = ((bytes + 63) / 64) * 64;
  if (rounded == 0) rounded = 64;
  if (rounded >= kLargeBlock) {
    const size_t capacity = (rounded + kHugePage - 1) / kHugePage * kHugePage;
    void* p = large_blocks().take(capacity);
    if (!p) PERCH_FAIL("out of memory allocating ", bytes, " bytes");
    if (zero) std::memset(p, 0, rounded);
    return std::shared_ptr<std::byte[]>(static_cast<std::byte*>(p),
                                        [capacity](std::byte* q) { large_blocks().give(q, capacity); });
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) PERCH_FAIL("out of memory allocating ", bytes, " bytes");
  if (zero) std::memset(p, 0, rounded);
  return std::shared_ptr<std::byte[]>(static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); });
}
}  // namespace

TensorCacheStats tensor_cache_stats() { return large_blocks().stats(); }
void release_tensor_cache() { large_blocks().release(); }

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  numel_ = checked_numel(shape_);
  buf_ = allocate(nbytes(), true);
}

Tensor Tensor::uninitialized(DType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = checked_numel(t.shape_);
  t.buf_ = allocate(t.nbytes(), false);
  return t;
}

Tensor Tensor::scalar_f32(float v) {
  Tensor t(DType::kFloat32, {});
  t.data<float>()[0] = v;
  return t;
}

int64_t Tensor::dim(int64_t i) const { return shape_[static_cast<size_t>(normalize_axis(i, rank(), "Tensor::dim"))]; }

void Tensor::check_type(DType want) const {
  PERCH_CHECK(want == dtype_, "tensor of type ", dtype_name(dtype_), " accessed as ", dtype_name(want));
}

Tensor Tensor::reshaped(Shape shape) const {
  PERCH_CHECK(checked_numel(shape) == numel_, "cannot reshape ", shape_str(shape_), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t(dtype_, shape_);
  if (nbytes()) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

namespace {
// Float -> integer conversion of NaN or an out-of-range value is undefined behaviour in C++ (ONNX leaves
// the result unspecified): it saturates here, NaN giving 0, so hostile Cast inputs or float shape / zero-point
// tensors can never trigger UB.
template <typename Dst, typename Src>
Dst convert_value(Src v) {
  if constexpr (std::is_same_v<Src, Half>) {
    return convert_value<Dst>(half_to_float(v.bits));
  } else if constexpr (std::is_same_v<Src, BFloat16>) {
    return convert_value<Dst>(bfloat16_to_float(v.bits));
  } else if constexpr (std::is_same_v<Dst, Half>) {
    return Half{half_from_double(static_cast<double>(v))};
  } else if constexpr (std::is_same_v<Dst, BFloat16>) {
    return BFloat16{bfloat16_from_double(static_cast<double>(v))};
  } else if constexpr (std::is_floating_point_v<Src> && std::is_integral_v<Dst> && !std::is_same_v<Dst, bool>) {
    if (std::isnan(v)) return Dst{0};
    // Compare in the float type: the integer limits round to exactly representable powers of two (+1).
    constexpr Src lo = static_cast<Src>(std::numeric_limits<Dst>::min());
    constexpr Src hi = static_cast<Src>(std::numeric_limits<Dst>::max());
    if (v <= lo) return std::numeric_limits<Dst>::min();
    if (v >= hi) return std::numeric_limits<Dst>::max();
    return static_cast<Dst>(v);
  } else if constexpr (std::is_same_v<Src, double> && std::is_same_v<Dst, float>) {
    return static_cast<float>(v);  // out of range -> ±inf (IEEE, defined under GCC/Clang)
  } else {
    return static_cast<Dst>(v);
  }
}

template <typename Dst, typename Src>
void convert(const Tensor& in, Tensor& out) {
  const Src* s = in.data<Src>();
  Dst* d = out.data<Dst>();
  for (int64_t i = 0; i < in.numel(); ++i) d[i] = convert_value<Dst>(s[i]);
}
template <typename Dst>
Tensor convert_to(const Tensor& in) {
  Tensor out(dtype_of<Dst>(), in.shape());
  switch (in.dtype()) {
    case DType::kFloat32: convert<Dst, float>(in, out); break;
    case DType::kFloat64: convert<Dst, double>(in, out); break;
    case DType::kInt8: convert<Dst, int8_t>(in, out); break;
    case DType::kUInt8: convert<Dst, uint8_t>(in, out); break;
    case DType::kInt16: convert<Dst, int16_t>(in, out); break;
    case DType::kUInt16: convert<Dst, uint16_t>(in, out); break;
    case DType::kInt32: convert<Dst, int32_t>(in, out); break;
    case DType::kInt64: convert<Dst, int64_t>(in, out); break;
    case DType::kBool: convert<Dst, bool>(in, out); break;
    case DType::kFloat16: convert<Dst, Half>(in, out); break;
    case DType::kBFloat16: convert<Dst, BFloat16>(in, out); break;
  }
  return out;
}
}  // namespace

Tensor Tensor::to_f32() const {
  if (dtype_ == DType::kFloat32) return *this;
  return convert_to<float>(*this);
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  switch (dtype) {
    case DType::kFloat32: return convert_to<float>(*this);
    case DType::kFloat64: return convert_to<double>(*this);
    case DType::kInt8: return convert_to<int8_t>(*this);
    case DType::kUInt8: return convert_to<uint8_t>(*this);
    case DType::kInt16: return convert_to<int16_t>(*this);
    case DType::kUInt16: return convert_to<uint16_t>(*this);
    case DType::kInt32: return convert_to<int32_t>(*this);
    case DType::kInt64: return convert_to<int64_t>(*this);
    case DType::kBool: return convert_to<bool>(*this);
    case DType::kFloat16: return convert_to<Half>(*this);
    case DType::kBFloat16: return convert_to<BFloat16>(*this);
  }
  PERCH_FAIL("unknown dtype");
}

std::vector<int64_t> Tensor::to_i64_vector() const {
  Tensor t = dtype_ == DType::kInt64 ? *this : convert_to<int64_t>(*this);
  auto s = t.span<int64_t>();
  return {s.begin(), s.end()};
}

int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& what) {
  PERCH_CHECK((axis >= -rank && axis < rank) || (rank == 0 && (axis == 0 || axis == -1)), what, ": axis ", axis,
              " out of range for rank ", rank);
  if (rank == 0) return 0;
  return axis < 0 ? axis + rank : axis;
}

}  // namespace perch
