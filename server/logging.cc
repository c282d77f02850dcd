#include "server/logging.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace wmserve::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::string& ProcessName() {
  static auto* name = new std::string("wmserve");
  return *name;
}
const char* LevelName(Level l) {
  switch (l) {
    case Level::kDebug: return "DEBUG";
    case Level::kInfo: return "INFO";
    case Level::kWarning: return "WARN";
    case Level::kError: return "ERROR";
  }
  return "?";
}
}  // namespace

void SetLevel(Level level) { g_level.store(static_cast<int>(level)); }
Level GetLevel() { return static_cast<Level>(g_level.load()); }
void SetProcessName(absl::string_view name) { ProcessName() = std::string(name); }

bool ParseLevel(absl::string_view text, Level* level) {
  if (text == "debug") *level = Level::kDebug;
  else if (text == "info") *level = Level::kInfo;
  else if (text == "warning" || text == "warn") *level = Level::kWarning;
  else if (text == "error") *level = Level::kError;
  else return false;
  return true;
}

Line::Line(Level level, absl::string_view event)
    : enabled_(static_cast<int>(level) >= g_level.load()) {
  if (!enabled_) return;
  stream_ << absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()) << ' '
          << LevelName(level) << ' ' << ProcessName() << ' ' << event;
}

Line::~Line() {
  if (!enabled_) return;
  stream_ << '\n';
  const std::string s = stream_.str();
  // One write() per line keeps lines from different threads/processes unmixed.
  ssize_t ignored = ::write(STDERR_FILENO, s.data(), s.size());
  (void)ignored;
}

std::ostream& operator<<(std::ostream& os, const Kv& kv) {
  os << ' ' << kv.key << '=';
  const bool quote = kv.value.empty() || absl::StrContains(kv.value, ' ') ||
                     absl::StrContains(kv.value, '"') || absl::StrContains(kv.value, '=');
  if (!quote) return os << kv.value;
  os << '"';
  for (char c : kv.value) {
    if (c == '"' || c == '\\') os << '\\';
    os << (c == '\n' ? ' ' : c);
  }
  return os << '"';
}

}  // namespace wmserve::log
