#include "perch/core/tensor.h"

#include <gtest/gtest.h>

#include <cstring>

namespace perch {
namespace {

constexpr int64_t kBigFloats = int64_t{40} << 18;  // 40 MiB of float32: above the 32 MiB large-block bound

bool cache_on() { return tensor_cache_stats().limit_bytes > 0; }

TEST(TensorCache, FreedLargeBlockIsReused) {
  if (!cache_on()) GTEST_SKIP() << "tensor cache off (AddressSanitizer build or PERCH_TENSOR_CACHE_MB=0)";
  release_tensor_cache();
  const TensorCacheStats before = tensor_cache_stats();
  const void* first = nullptr;
  {
    Tensor a = Tensor::uninitialized(DType::kFloat32, {kBigFloats});
    first = a.raw();
  }
  EXPECT_GE(tensor_cache_stats().cached_bytes, static_cast<size_t>(kBigFloats) * 4);
  Tensor b = Tensor::uninitialized(DType::kFloat32, {kBigFloats - 1000});  // a little smaller: same block
  const TensorCacheStats after = tensor_cache_stats();
  EXPECT_EQ(b.raw(), first);
  EXPECT_EQ(after.hits, before.hits + 1);
  EXPECT_EQ(after.misses, before.misses + 1);
  EXPECT_EQ(after.cached_bytes, 0u);
  // Large blocks keep the 64-byte alignment every kernel relies on (they are in fact 2 MiB aligned).
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) % 64, 0u);
}

TEST(TensorCache, ReusedBlockIsZeroedForZeroInitializedTensors) {
  release_tensor_cache();
  {
    Tensor dirty = Tensor::uninitialized(DType::kUInt8, {kBigFloats * 4});
    std::memset(dirty.raw(), 0xAB, dirty.nbytes());
  }
  Tensor clean(DType::kInt32, {kBigFloats});
  const int32_t* p = clean.data<int32_t>();
  int64_t nonzero = 0;
  for (int64_t i = 0; i < clean.numel(); ++i) nonzero += p[i] != 0;
  EXPECT_EQ(nonzero, 0);
}

TEST(TensorCache, MuchLargerBlockIsNotHandedToASmallRequest) {
  if (!cache_on()) GTEST_SKIP() << "tensor cache off (AddressSanitizer build or PERCH_TENSOR_CACHE_MB=0)";
  release_tensor_cache();
  { Tensor big = Tensor::uninitialized(DType::kFloat32, {kBigFloats * 2}); }  // 80 MiB cached
  const TensorCacheStats before = tensor_cache_stats();
  Tensor small = Tensor::uninitialized(DType::kFloat32, {kBigFloats});  // 40 MiB: 80 is more than 1.5x
  EXPECT_EQ(tensor_cache_stats().hits, before.hits);
  EXPECT_EQ(tensor_cache_stats().cached_bytes, before.cached_bytes);
  release_tensor_cache();
  EXPECT_EQ(tensor_cache_stats().cached_bytes, 0u);
}

TEST(TensorCache, SmallTensorsDoNotUseIt) {
  release_tensor_cache();
  const TensorCacheStats before = tensor_cache_stats();
  { Tensor t = Tensor::uninitialized(DType::kFloat32, {int64_t{1} << 20}); }  // 4 MiB: glibc's heap reuses it
  EXPECT_EQ(tensor_cache_stats().misses, before.misses);
  EXPECT_EQ(tensor_cache_stats().cached_bytes, 0u);
}

}  // namespace
}  // namespace perch
