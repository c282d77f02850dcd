// Minimal structured logging: one line per event, `key=value` pairs, to stderr.
//
//   WM_LOG(kInfo, "rollout_state") << Kv("rollout", id) << Kv("state", "RUNNING");
//   -> 2026-11-26T13:40:01.123Z INFO scheduler rollout_state rollout=r-1 state=RUNNING
//
// Level is process-wide (--log-level). Thread-safe: each line is written with one write().
#ifndef WMSERVE_SERVER_LOGGING_H_
#define WMSERVE_SERVER_LOGGING_H_

#include <sstream>
#include <string>

#include "absl/strings/string_view.h"

namespace wmserve::log {

enum class Level { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetLevel(Level level);
Level GetLevel();
// "debug" | "info" | "warning" | "error"; false if unknown.
bool ParseLevel(absl::string_view text, Level* level);
// The process name printed on each line ("scheduler", "worker-0", ...).
void SetProcessName(absl::string_view name);

class Line {
 public:
  Line(Level level, absl::string_view event);
  ~Line();
  template <typename T>
  Line& operator<<(const T& value) {
    if (enabled_) stream_ << value;
    return *this;
  }

 private:
  bool enabled_;
  std::ostringstream stream_;
};

// ` key=value`; values with spaces or quotes are quoted.
struct Kv {
  template <typename T>
  Kv(absl::string_view k, const T& v) : key(k) {
    std::ostringstream s;
    s << v;
    value = s.str();
  }
  std::string key;
  std::string value;
};
std::ostream& operator<<(std::ostream& os, const Kv& kv);

}  // namespace wmserve::log

#define WM_LOG(level, event) ::wmserve::log::Line(::wmserve::log::Level::level, event)

#endif  // WMSERVE_SERVER_LOGGING_H_
