// File: a read-only safetensors reader over a POSIX memory mapping.
//
// Depends on LibTorch and the C++ standard library only.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N
// bytes of JSON header, then the data buffer. The header maps tensor names to
// {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data buffer) plus an
// optional "__metadata__" object of string -> string.
//
// Open() validates everything before any tensor is touched, with the same strictness as the
// reference implementation: header bounds, JSON syntax, dtype names, shapes, that every byte range
// matches its shape and dtype, that ranges lie inside the file, and that they tile the data buffer
// without holes or overlaps. A corrupt or truncated file is an error (SafetensorsError), never a
// crash. Tensor data is not checked (NaNs load as NaNs).
//
// Loadable dtypes: F32, BF16, F16 (weights and activations) and I64 (masks in the golden test
// files). Other safetensors dtypes (F64, I32, U8, BOOL, F8_*, ...) are accepted by Open() so a file
// that carries them can still be inspected, but Load() of such a tensor throws.
//
// Lifetime: the mapping is reference-counted. Load() returns tensors that own their memory;
// View() returns zero-copy CPU tensors that keep the mapping alive until the last view is freed,
// so the SafetensorsFile itself may be destroyed first.
#ifndef WMSERVE_WORKER_MODELS_SANA_SAFETENSORS_H_
#define WMSERVE_WORKER_MODELS_SANA_SAFETENSORS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace wmserve::worker::sana {

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;            // as written in the header: "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;      // byte offsets relative to the start of the data buffer
  uint64_t data_end = 0;
  int64_t numel() const;
  uint64_t nbytes() const { return data_end - data_begin; }
};

// "[192,64]" ("[]" for a scalar).
std::string ShapeString(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  // Maps and validates `path`. Throws SafetensorsError ("<path>: <what is wrong>").
  static SafetensorsFile Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  // Tensor names in sorted order (excluding "__metadata__").
  std::vector<std::string> names() const;
  size_t size() const { return tensors_.size(); }
  bool Contains(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws SafetensorsError naming the file when absent.
  const SafetensorsTensorInfo& Info(const std::string& name) const;
  // The ATen dtype of a loadable tensor; throws for dtypes Load() does not support.
  c10::ScalarType ScalarTypeOf(const std::string& name) const;
  // The "__metadata__" map (empty when the header has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // One metadata entry; throws SafetensorsError when absent.
  const std::string& Metadata(const std::string& key) const;

  // A copy of tensor `name` converted to `dtype` (default: the file's dtype) on `device`
  // (default: CPU). The result never aliases the mapping.
  at::Tensor Load(const std::string& name, std::optional<c10::ScalarType> dtype = std::nullopt,
                  std::optional<c10::Device> device = std::nullopt) const;
  // A zero-copy, read-only-by-contract CPU tensor over the mapping (copied instead when the data
  // is not aligned to its element size). Do not write to it: the mapping is MAP_PRIVATE, so a
  // write would only change this process's copy, but other views would see it.
  at::Tensor View(const std::string& name) const;

  // Compares the file's tensors with the tensors a model expects (name -> shape). Names in
  // `ignore` may be present or absent in the file without complaint; an entry ending in '*' is a
  // prefix pattern ("raymap_embedder.*"). Throws one SafetensorsError listing every problem:
  //   "weights.safetensors: 2 missing (a [192,64], b [64]), 1 unexpected (foo),
  //    1 mis-shaped (x.weight: file [64,8], model [64,4])"
  void CheckTensors(const std::map<std::string, std::vector<int64_t>>& expected,
                    const std::set<std::string>& ignore = {}) const;

 private:
  struct Mapping;
  SafetensorsFile() = default;
  const uint8_t* DataPointer(const SafetensorsTensorInfo& info) const;

  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t data_start_ = 0;  // 8 + N
  std::map<std::string, SafetensorsTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_SAFETENSORS_H_
