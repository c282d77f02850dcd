// Helpers shared by the model-port tests (tests/model/): where the golden reference data lives,
// tensor error measures, and writing small safetensors files for the loader tests.
//
// Golden data: $WMSERVE_GOLDEN_ROOT/<name>, or ../shared/golden/<name> beside the checkout
// (<name>: "sana-wm-tiny", "ltx2-vae-tiny", "ltx2-refiner-tiny"). Tests skip with a message
// naming the folder when it is absent.
#ifndef WMSERVE_TESTS_MODEL_MODEL_TEST_UTIL_H_
#define WMSERVE_TESTS_MODEL_MODEL_TEST_UTIL_H_

#include <ATen/core/Tensor.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace wmserve::worker::test_util {

inline std::string GoldenDir(const std::string& name) {
  const char* env = std::getenv("WMSERVE_GOLDEN_ROOT");
  const std::string root = (env && *env) ? env : WMSERVE_SOURCE_DIR "/../shared/golden";
  return root + "/" + name;
}

// The SANA-WM Stage-1 set.
inline std::string SanaGoldenDir() { return GoldenDir("sana-wm-tiny"); }

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline double MaxAbs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// max |got - ref| / max |ref| in float64 (the absolute error when ref is all zeros).
inline double RelErr(const at::Tensor& got, const at::Tensor& ref) {
  const at::Tensor r = ref.to(at::kDouble);
  const double scale = MaxAbs(r);
  const double diff = MaxAbs(got.to(at::kDouble).sub(r));
  return scale > 0 ? diff / scale : diff;
}

// Writes float32 tensors as a safetensors file (header padded to 8 bytes).
inline void WriteFloatSafetensors(const std::string& path,
                                  const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::string header = "{";
  std::string data;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor t = tensors[i].second.to(at::kFloat).contiguous();
    std::string shape = "[";
    for (int64_t d = 0; d < t.dim(); ++d) shape += (d ? "," : "") + std::to_string(t.size(d));
    shape += "]";
    const size_t begin = data.size();
    data.append(static_cast<const char*>(t.data_ptr()), t.numel() * sizeof(float));
    header += (i ? "," : "") + std::string("\"") + tensors[i].first + "\":{\"dtype\":\"F32\"," +
              "\"shape\":" + shape + ",\"data_offsets\":[" + std::to_string(begin) + "," +
              std::to_string(data.size()) + "]}";
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

}  // namespace wmserve::worker::test_util

#endif  // WMSERVE_TESTS_MODEL_MODEL_TEST_UTIL_H_
