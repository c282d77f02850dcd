// Command-line helpers shared by the wmserve daemons (Abseil flags underneath).
//
// Operators and scripts spell flags with dashes (`--metrics-listen`); Abseil names them with
// underscores. ParseDaemonFlags accepts both, then applies an optional config file of
// `flag = value` lines to every flag not given on the command line (command line wins).
#ifndef WMSERVE_SERVER_CLI_FLAGS_H_
#define WMSERVE_SERVER_CLI_FLAGS_H_

#include <signal.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace wmserve {

// Parses argv into the process's ABSL_FLAGs (exits with usage on unknown flags, like
// absl::ParseCommandLine). If `config_flag_value` is non-empty after parsing, that file is
// applied too. Returns the config error, if any.
absl::Status ParseDaemonFlags(int argc, char** argv, std::string (*config_path)());

// Common daemon start-up after flag parsing: sets the log process name and level (`log_level`
// as for --log-level), ignores SIGPIPE and blocks SIGTERM/SIGINT in this thread — and so in
// every thread started later — so one thread can take them with sigwait(). Returns that set.
absl::StatusOr<sigset_t> InitDaemon(const std::string& process_name, const std::string& log_level);

}  // namespace wmserve

#endif  // WMSERVE_SERVER_CLI_FLAGS_H_
