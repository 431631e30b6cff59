// perch/data/dataset.h — the data specs every perch command shares.
//
//   fashion-mnist:train | fashion-mnist:test
//       Debian's dataset-fashion-mnist files in /usr/share/datasets/fashion-mnist (override the folder with
//       env PERCH_FASHION_MNIST_DIR): {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
//   idx:IMAGES,LABELS
//       any uint8 IDX image file ([N,H,W] or [N,C,H,W], plain or .gz) plus its IDX label file.
//   npy:FILE  |  npy:FILE,LABELS.npy
//       an already preprocessed float32 (or float64, converted) batch [N,...]; optional integer labels [N].
//   npy:NAME=FILE,NAME2=FILE2,...[,LABELS.npy]
//       a model with several inputs: one batch [N,...] per named model input, row i of every file belonging to
//       the same sample (float64 is converted to float32, integer files are kept as they are); the first named
//       file plays the role of the images (its input is `images_input`), the others are `inputs`. A plain FILE
//       among them is the labels.
//
//   SPEC+SPEC+...
//       several of the above, their rows in order (a model with dynamic dims calibrated at several input sizes:
//       `npy:det_320.npy+npy:det_480x352.npy`). Parts whose inputs have the same shapes after the batch dim
//       are concatenated; a part of another shape starts a new shape group (Dataset::groups). Every part names
//       the same inputs; labels on every part or on none. A '+' splits only where a scheme follows it.
//
// Pixel sources (fashion-mnist, idx) are normalized as x = (pixel/255 - mean)/std, by default mean 0.2860,
// std 0.3530 (Fashion-MNIST's training statistics; the reference models expect them). npy data is used as is.
// Images are kept in memory as float32 [N,C,H,W] ([N,H,W] IDX images get C = 1).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "perch/core/tensor.h"

namespace perch {

inline constexpr float kFashionMnistMean = 0.2860f;
inline constexpr float kFashionMnistStd = 0.3530f;

struct Dataset {
  Tensor images;                // float32 [N, ...] ([N,C,H,W] for pixel sources)
  std::vector<int64_t> labels;  // empty, or one per image
  std::string name;             // the spec (and the range, for take/sample)
  // Models with several inputs: the model input `images` feeds (empty: the model's first input) and the other
  // inputs by name, each [N, ...] row-aligned with `images` (take/sample/batch slice them together).
  std::string images_input;
  std::vector<std::pair<std::string, Tensor>> inputs;
  // Rows of other shapes (SPEC+SPEC data): each group holds `images` and `inputs` (the same names, each group one
  // shape) and nothing else; its rows follow those of `images` and of the groups before it. `labels` covers every
  // row. Batches never mix groups: loop over chunks().
  std::vector<Dataset> groups;

  // Rows in every group.
  int64_t size() const;
  bool has_labels() const { return !labels.empty(); }
  // [begin, count) pieces of at most `batch` rows covering 0..size() in order, none crossing a shape group.
  std::vector<std::pair<int64_t, int64_t>> chunks(int64_t batch) const;
  // A copy of rows [begin, begin + count); throws naming the dataset if out of range or across shape groups.
  Tensor batch(int64_t begin, int64_t count) const;
  // Rows [begin, begin + count) of every input, by model input name: the images under `images_input`, or under
  // `first_input` (the model's first input) when that is empty, and each of `inputs`.
  std::unordered_map<std::string, Tensor> feeds(const std::string& first_input, int64_t begin, int64_t count) const;
  // The shape group holding rows [begin, begin + count) (this dataset or one of `groups`) and the first row's index
  // in it; throws naming the dataset when the rows cross groups.
  std::pair<const Dataset*, int64_t> locate(int64_t begin, int64_t count) const;
  // The rows [begin, count) of the largest shape group (the first of the largest): take() them for a pass that
  // needs every row in one batch shape.
  std::pair<int64_t, int64_t> largest_group_rows() const;
  // The model input the images feed.
  const std::string& images_name(const std::string& first_input) const {
    return images_input.empty() ? first_input : images_input;
  }
};

struct DataOptions {
  std::optional<float> mean;  // default kFashionMnistMean
  std::optional<float> std;   // default kFashionMnistStd; must be > 0
};

Dataset load_dataset(const std::string& spec, const DataOptions& options = {});

// Rows [offset, offset + count) (copied); throws if out of range.
Dataset take(const Dataset& ds, int64_t offset, int64_t count);
// `count` rows spread over the shape groups in proportion to their sizes (the first rows of each group; the rounding
// goes to the largest remainders, earlier groups first on ties), in row order: take(ds, 0, count) for data of one
// shape. The PTQ steps that use a part of their data (AdaRound's samples, the range search's images, sensitivity's
// evaluation count) take it this way, so every input size is in it.
Dataset take_spread(const Dataset& ds, int64_t count);
// The first half (rounded down) of every shape group, and the rest: two parts with the same mix of shapes (for one
// shape: rows [0, n/2) and [n/2, n)).
std::pair<Dataset, Dataset> split_halves(const Dataset& ds);
// `count` distinct rows chosen uniformly at random (without replacement), in random order; the same seed
// gives the same rows on every platform (perch's own PRNG, no std:: distributions).
Dataset sample(const Dataset& ds, int64_t count, uint64_t seed);

// The folder load_dataset reads fashion-mnist:* from ($PERCH_FASHION_MNIST_DIR or the Debian path).
std::string fashion_mnist_dir();

}  // namespace perch
