// Where the SANA-WM golden reference data lives for the parity tests: $WMSERVE_GOLDEN_DIR, or
// ../shared/golden/sana-wm-tiny beside the checkout. Tests skip with a clear message when absent.
#ifndef WMSERVE_TESTS_MODEL_SANA_GOLDEN_H_
#define WMSERVE_TESTS_MODEL_SANA_GOLDEN_H_

#include <sys/stat.h>

#include <cstdlib>
#include <string>

namespace wmserve::worker::sana::golden {

inline std::string GoldenDir() {
  const char* env = std::getenv("WMSERVE_GOLDEN_DIR");
  if (env && *env) return env;
  return WMSERVE_SOURCE_DIR "/../shared/golden/sana-wm-tiny";
}

inline bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace wmserve::worker::sana::golden

#endif  // WMSERVE_TESTS_MODEL_SANA_GOLDEN_H_
