// perch/core/tensor.h — a dense, row-major, typed n-d array.
//
// Storage is a shared, 64-byte-aligned buffer: copying a Tensor shares the data (cheap, used by the
// executor for Identity/Reshape), clone() copies it. Kernels always write into tensors they created.
// Shapes are int64 as in ONNX; element counts are checked for overflow and refused above
// kMaxElements before anything is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "perch/core/error.h"

namespace perch {

enum class DType : uint8_t { kFloat32, kFloat64, kInt8, kUInt8, kInt16, kUInt16, kInt32, kInt64, kBool, kFloat16, kBFloat16 };

// IEEE 754 binary16 (ONNX FLOAT16), stored as its bits. perch computes with it in float: half_to_float is exact;
// half_from_double rounds to nearest, ties to even, in one step (a double is never rounded to float first), with
// subnormals, overflow to ±inf (from 65520 up, the first value nearer inf than 65504 by the ties rule) and NaN kept
// NaN (quiet; sign and the payload's top 9 bits kept).
struct Half {
  uint16_t bits = 0;
};
float half_to_float(uint16_t h);
uint16_t half_from_double(double d);

// bfloat16 (ONNX BFLOAT16): float32's sign and 8-bit exponent with 7 mantissa bits, stored as its bits; a storage
// type like Half. bfloat16_to_float is exact (the bits are float32's top half); bfloat16_from_double rounds to
// nearest, ties to even, in one step, with subnormals, overflow to ±inf from (2 − 2^-8)·2^127 up, NaN kept NaN
// (quiet; sign and the payload's top 6 bits kept).
struct BFloat16 {
  uint16_t bits = 0;
};
float bfloat16_to_float(uint16_t b);
uint16_t bfloat16_from_double(double d);
// The 16-bit float storage types (float16, bfloat16): computed in float32 by the executor.
constexpr bool is_half_type(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16; }

size_t dtype_size(DType t);
const char* dtype_name(DType t);

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::kFloat32; }
template <> constexpr DType dtype_of<double>() { return DType::kFloat64; }
template <> constexpr DType dtype_of<int8_t>() { return DType::kInt8; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::kUInt8; }
template <> constexpr DType dtype_of<int16_t>() { return DType::kInt16; }
template <> constexpr DType dtype_of<uint16_t>() { return DType::kUInt16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::kInt32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::kInt64; }
template <> constexpr DType dtype_of<bool>() { return DType::kBool; }
template <> constexpr DType dtype_of<Half>() { return DType::kFloat16; }
template <> constexpr DType dtype_of<BFloat16>() { return DType::kBFloat16; }

using Shape = std::vector<int64_t>;

// Largest tensor perch will allocate: 2^34 elements (64 GiB of float) — larger requests are refused
// with an error before allocation instead of failing (or succeeding lazily) inside the allocator.
inline constexpr int64_t kMaxElements = int64_t{1} << 34;

// Number of elements of `shape`; throws if a dim is negative or the product overflows / exceeds
// kMaxElements. `what` names the tensor in the message.
int64_t checked_numel(const Shape& shape, const std::string& what = "tensor");
std::string shape_str(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);  // zero-initialized
  // Contents unspecified: for kernels that overwrite every element (skips a memset per activation).
  static Tensor uninitialized(DType dtype, Shape shape);
  static Tensor scalar_f32(float v);

  template <typename T>
  static Tensor from(Shape shape, std::span<const T> values) {
    Tensor t(dtype_of<T>(), std::move(shape));
    PERCH_CHECK(static_cast<int64_t>(values.size()) == t.numel(), "Tensor::from: ", values.size(),
                " values for shape ", shape_str(t.shape()));
    std::copy(values.begin(), values.end(), t.data<T>());
    return t;
  }
  template <typename T>
  static Tensor from(Shape shape, const std::vector<T>& values) {
    return from<T>(std::move(shape), std::span<const T>(values));
  }

  bool empty() const { return !buf_; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t rank() const { return static_cast<int64_t>(shape_.size()); }
  int64_t dim(int64_t i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  template <typename T> T* data() {
    check_type(dtype_of<T>());
    return reinterpret_cast<T*>(buf_.get());
  }
  template <typename T> const T* data() const {
    check_type(dtype_of<T>());
    return reinterpret_cast<const T*>(buf_.get());
  }
  template <typename T> std::span<T> span() { return {data<T>(), static_cast<size_t>(numel_)}; }
  template <typename T> std::span<const T> span() const { return {data<T>(), static_cast<size_t>(numel_)}; }
  void* raw() { return buf_.get(); }
  const void* raw() const { return buf_.get(); }

  // Same data, new shape (element count must match). Shares storage.
  Tensor reshaped(Shape shape) const;
  Tensor clone() const;
  // Converts any numeric dtype to float32 / int64 (new storage unless already that type).
  Tensor to_f32() const;
  // Converts to `dtype` as to_f32 does (float to integer: NaN 0, saturating; to float16: rounded to nearest even).
  Tensor to(DType dtype) const;
  std::vector<int64_t> to_i64_vector() const;

 private:
  void check_type(DType want) const;
  DType dtype_ = DType::kFloat32;
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<std::byte[]> buf_;
};

// Tensor storage of 32 MiB or more is recycled: freed blocks wait in a process-wide cache (default at most
// 512 MiB; the environment variable PERCH_TENSOR_CACHE_MB sets the limit, 0 turns it off) for the next tensor of
// about their size, instead of going back to the OS and being page-faulted in again (src/core/tensor.cpp).
struct TensorCacheStats {
  uint64_t hits = 0, misses = 0;  // large allocations served from the cache / newly allocated
  size_t cached_bytes = 0;        // held by the cache now
  size_t limit_bytes = 0;         // its limit (0 under AddressSanitizer: reuse would hide use-after-free)
};
TensorCacheStats tensor_cache_stats();
// Frees every cached block (memory held by live tensors is unaffected).
void release_tensor_cache();

// Normalizes an axis in [-rank, rank) to [0, rank); throws naming `what` otherwise.
int64_t normalize_axis(int64_t axis, int64_t rank, const std::string& what);

}  // namespace perch
