#include "server/cli_flags.h"

#include <fstream>
#include <set>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "server/logging.h"

namespace wmserve {
namespace {

std::string Underscored(absl::string_view name) { return absl::StrReplaceAll(name, {{"-", "_"}}); }

absl::Status ApplyConfigFile(const std::string& path, const std::set<std::string>& from_cli) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("config: cannot open ", path));
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> kv = absl::StrSplit(text, absl::MaxSplits('=', 1));
    const std::string where = absl::StrCat("config ", path, ":", n, ": ");
    if (kv.size() != 2) return absl::InvalidArgumentError(where + "expected `flag = value`");
    const std::string name = Underscored(absl::StripAsciiWhitespace(kv[0]));
    std::string value(absl::StripAsciiWhitespace(kv[1]));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (from_cli.count(name)) continue;
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr || name == "config") {
      return absl::InvalidArgumentError(absl::StrCat(where, "unknown flag ", name));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(where, name, ": ", error));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ParseDaemonFlags(int argc, char** argv, std::string (*config_path)()) {
  std::vector<std::string> args(argv, argv + argc);
  std::set<std::string> from_cli;
  for (size_t i = 1; i < args.size(); ++i) {
    absl::string_view a = args[i];
    if (a == "--") break;
    if (!absl::ConsumePrefix(&a, "--")) continue;
    const size_t eq = a.find('=');
    const std::string name = Underscored(a.substr(0, eq));
    from_cli.insert(name);
    args[i] = absl::StrCat("--", name, eq == absl::string_view::npos ? "" : a.substr(eq));
    // `--flag value`: the value is data, even when it starts with dashes (--worker-args "...").
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (eq == absl::string_view::npos && flag != nullptr && !flag->IsOfType<bool>()) ++i;
  }
  std::vector<char*> normalized;
  for (auto& a : args) normalized.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(normalized.size()), normalized.data());
  const std::string config = config_path();
  if (config.empty()) return absl::OkStatus();
  return ApplyConfigFile(config, from_cli);
}

absl::StatusOr<sigset_t> InitDaemon(const std::string& process_name,
                                    const std::string& log_level) {
  log::SetProcessName(process_name);
  log::Level level;
  if (!log::ParseLevel(log_level, &level)) {
    return absl::InvalidArgumentError("--log-level must be debug|info|warning|error");
  }
  log::SetLevel(level);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  return stop_signals;
}

}  // namespace wmserve
