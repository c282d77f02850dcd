#include "server/local_workers.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/logging.h"

namespace wmserve::server {

using log::Kv;

LocalWorkerSupervisor::LocalWorkerSupervisor(const LocalWorkerOptions& options,
                                             metrics::SchedulerMetrics* metrics)
    : options_(options), metrics_(metrics) {}

absl::StatusOr<std::unique_ptr<LocalWorkerSupervisor>> LocalWorkerSupervisor::Start(
    const LocalWorkerOptions& options, metrics::SchedulerMetrics* metrics) {
  if (::access(options.binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker binary ", options.binary, " is not executable: ", strerror(errno)));
  }
  std::unique_ptr<LocalWorkerSupervisor> sup(new LocalWorkerSupervisor(options, metrics));
  {
    absl::MutexLock lock(&sup->mu_);
    for (int i = 0; i < options.count; ++i) {
      Child child;
      child.name = absl::StrCat("local-", i);
      child.backoff = options.min_backoff;
      if (absl::Status s = sup->SpawnLocked(child); !s.ok()) return s;
      sup->children_.push_back(std::move(child));
    }
  }
  sup->monitor_ = std::thread([s = sup.get()] { s->MonitorLoop(); });
  return sup;
}

LocalWorkerSupervisor::~LocalWorkerSupervisor() { Stop(absl::Seconds(5)); }

absl::Status LocalWorkerSupervisor::SpawnLocked(Child& child) {
  std::vector<std::string> args = {options_.binary, "--scheduler", options_.scheduler_address,
                                   "--name", child.name};
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    // Child: die with the scheduler, even if it is SIGKILLed.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(1);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the scheduler blocks SIGTERM for sigwait
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  child.pid = pid;
  child.started = absl::Now();
  WM_LOG(kInfo, "local_worker_spawned") << Kv("name", child.name) << Kv("pid", pid);
  return absl::OkStatus();
}

void LocalWorkerSupervisor::MonitorLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      for (Child& child : children_) {
        if (child.pid > 0) {
          int status = 0;
          const pid_t r = ::waitpid(child.pid, &status, WNOHANG);
          if (r != child.pid) continue;
          const std::string reason = WIFSIGNALED(status) ? "signal" : "exit";
          const int detail = WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status);
          if (now - child.started >= options_.stable_after) child.backoff = options_.min_backoff;
          WM_LOG(kWarning, "local_worker_exited")
              << Kv("name", child.name) << Kv("pid", child.pid) << Kv("reason", reason)
              << Kv(reason == "signal" ? "signal" : "code", detail)
              << Kv("respawn_in_s", absl::ToDoubleSeconds(child.backoff));
          metrics_->WorkerRestarted(reason);
          child.pid = -1;
          child.respawn_at = now + child.backoff;
          child.backoff = std::min(child.backoff * 2, options_.max_backoff);
        } else if (now >= child.respawn_at) {
          if (absl::Status s = SpawnLocked(child); !s.ok()) {
            WM_LOG(kError, "local_worker_spawn_failed") << Kv("name", child.name)
                                                        << Kv("status", s.ToString());
            child.respawn_at = now + child.backoff;
          }
        }
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

void LocalWorkerSupervisor::Stop(absl::Duration grace) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (monitor_.joinable()) monitor_.join();
  absl::MutexLock lock(&mu_);
  for (Child& c : children_) {
    if (c.pid > 0) ::kill(c.pid, SIGTERM);
  }
  const absl::Time deadline = absl::Now() + grace;
  for (Child& c : children_) {
    while (c.pid > 0) {
      int status = 0;
      const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || r < 0) {
        c.pid = -1;
      } else if (absl::Now() >= deadline) {
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, &status, 0);
        c.pid = -1;
      } else {
        absl::SleepFor(absl::Milliseconds(20));
      }
    }
  }
}

}  // namespace wmserve::server
