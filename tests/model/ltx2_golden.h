// Where the LTX-2 golden reference data lives for the parity tests: $WMSERVE_GOLDEN_ROOT/<name>, or
// ../shared/golden/<name> beside the checkout. Tests skip with a clear message when it is absent.
#ifndef WMSERVE_TESTS_MODEL_LTX2_GOLDEN_H_
#define WMSERVE_TESTS_MODEL_LTX2_GOLDEN_H_

#include <sys/stat.h>

#include <cstdlib>
#include <string>

namespace wmserve::worker::ltx2::golden {

// `name` is a folder under the golden root: "ltx2-vae-tiny", "ltx2-refiner-tiny".
inline std::string GoldenDir(const std::string& name) {
  const char* env = std::getenv("WMSERVE_GOLDEN_ROOT");
  const std::string root = (env && *env) ? env : WMSERVE_SOURCE_DIR "/../shared/golden";
  return root + "/" + name;
}

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace wmserve::worker::ltx2::golden

#endif  // WMSERVE_TESTS_MODEL_LTX2_GOLDEN_H_
