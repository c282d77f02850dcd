#include "tests/e2e/process_harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/rollout_client.h"
#include "worker/media/image_io.h"
#include <gtest/gtest.h>

namespace wmserve::testing {

std::string BinDir() { return WMSERVE_BIN_DIR; }
std::string SchedulerBinary() { return BinDir() + "/server/wmserve-scheduler"; }
std::string WorkerBinary() { return BinDir() + "/worker/wmserve-worker"; }
std::string WmctlBinary() { return BinDir() + "/client/wmctl"; }

std::string MakeTempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = absl::StrCat(base ? base : "/tmp", "/wmserve-e2e-XXXXXX");
  char* made = ::mkdtemp(tmpl.data());
  return made ? std::string(made) : std::string("/tmp");
}

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log_path) {
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test binary
    if (!log_path.empty()) {
      const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
        ::close(fd);
      }
    }
    ::execv(cargv[0], cargv.data());
    ::_exit(127);
  }
  return pid;
}

absl::StatusOr<std::unique_ptr<SchedulerProcess>> SchedulerProcess::Start(
    const SchedulerConfig& config) {
  std::unique_ptr<SchedulerProcess> p(new SchedulerProcess());
  p->dir_ = MakeTempDir();
  const std::string ready = p->dir_ + "/ready";
  std::vector<std::string> argv = {SchedulerBinary(),
                                   "--listen", "127.0.0.1:0",
                                   "--metrics-listen", "127.0.0.1:0",
                                   "--ready-file", ready,
                                   "--local-workers", std::to_string(config.local_workers),
                                   "--worker-args", config.worker_args + " --metrics-listen 127.0.0.1:0",
                                   "--drain-timeout-s", "20"};
  argv.insert(argv.end(), config.extra_args.begin(), config.extra_args.end());
  p->pid_ = SpawnLogged(argv, p->dir_ + "/scheduler.log");
  if (p->pid_ < 0) return absl::InternalError("fork failed");

  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (::access(ready.c_str(), R_OK) != 0) {
    int status = 0;
    if (::waitpid(p->pid_, &status, WNOHANG) == p->pid_) {
      p->pid_ = -1;
      return absl::InternalError(absl::StrCat("scheduler exited at start:\n", p->Log()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("scheduler not ready:\n", p->Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  for (absl::string_view line : absl::StrSplit(ReadFile(ready), '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.size() != 2) continue;
    if (kv[0] == "listen") p->address_ = kv[1];
    if (kv[0] == "metrics") p->metrics_address_ = kv[1];
  }
  p->stub_ = v1::RolloutService::NewStub(client::MakeChannel(p->address_));
  return p;
}

SchedulerProcess::~SchedulerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

absl::StatusOr<v1::ListWorkersResponse> SchedulerProcess::Workers() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListWorkersResponse resp;
  grpc::Status s = stub_->ListWorkers(&ctx, v1::ListWorkersRequest(), &resp);
  if (!s.ok()) return absl::UnavailableError(s.error_message());
  return resp;
}

absl::Status SchedulerProcess::WaitForReadyWorkers(int n, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    auto workers = Workers();
    int ready = 0;
    if (workers.ok()) {
      for (const auto& w : workers->workers()) {
        if (w.state() == v1::WORKER_STATE_READY || w.state() == v1::WORKER_STATE_BUSY) ++ready;
      }
    }
    if (ready >= n) return absl::OkStatus();
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(ready, " of ", n, " workers ready after ", absl::FormatDuration(timeout),
                       "; log:\n", Log()));
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

absl::StatusOr<int> SchedulerProcess::SignalAndWait(int sig, absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  ::kill(pid_, sig);
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (absl::Now() > deadline) return absl::DeadlineExceededError("process did not exit");
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::string SchedulerProcess::Log() const { return ReadFile(dir_ + "/scheduler.log"); }

media::RgbImage MakeTestImage(int width, int height, int seed) {
  media::RgbImage img;
  img.width = width;
  img.height = height;
  img.pixels.resize(static_cast<size_t>(width) * height * 3);
  // Smooth, aperiodic structure at several scales: the sum of a few incommensurate sinusoids per
  // channel, plus hard-edged discs, so both PSNR and shift estimation are well conditioned.
  const double s = 0.37 * seed;
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double u = x, v = y;
      double r = 128 + 60 * std::sin(u * 0.031 + s) + 40 * std::cos(v * 0.047 + 0.5 * u * 0.011);
      double g = 128 + 55 * std::sin(v * 0.027 - s) + 45 * std::sin((u + v) * 0.019);
      double b = 128 + 50 * std::cos(u * 0.013 + v * 0.021) + 50 * std::sin(u * 0.057 - v * 0.009);
      for (int k = 0; k < 12; ++k) {
        const double cx = std::fmod(97.0 * (k + 1) * 7.3 + seed * 31, width);
        const double cy = std::fmod(53.0 * (k + 1) * 5.1 + seed * 17, height);
        const double rad = 10 + (k * 7) % 23;
        if ((u - cx) * (u - cx) + (v - cy) * (v - cy) < rad * rad) {
          r = (k * 71) % 256;
          g = (k * 151) % 256;
          b = (k * 199) % 256;
        }
      }
      uint8_t* p = &img.pixels[(static_cast<size_t>(y) * width + x) * 3];
      p[0] = static_cast<uint8_t>(std::clamp(r, 0.0, 255.0));
      p[1] = static_cast<uint8_t>(std::clamp(g, 0.0, 255.0));
      p[2] = static_cast<uint8_t>(std::clamp(b, 0.0, 255.0));
    }
  }
  return img;
}

absl::StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path) {
  const size_t colon = host_port.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(host_port.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError("bad address " + host_port);
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, host_port.substr(0, colon).c_str(), &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("connect ", host_port, ": ", strerror(errno)));
  }
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host_port, "\r\n\r\n");
  if (::write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    ::close(fd);
    return absl::UnavailableError("write failed");
  }
  std::string response;
  char buf[8192];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) response.append(buf, n);
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (body == std::string::npos) return absl::DataLossError("no HTTP body");
  return response.substr(body + 4);
}

v1::RolloutRequest MakeWarpRequest(client::TrajectoryPreset preset, int frames, double amount,
                                   const media::RgbImage& image, uint64_t seed) {
  return MakeModelRequest("warp", preset, frames, amount, image, seed);
}

v1::RolloutRequest MakeModelRequest(const std::string& model, client::TrajectoryPreset preset,
                                    int frames, double amount, const media::RgbImage& image,
                                    uint64_t seed,
                                    const std::map<std::string, std::string>& options) {
  client::PresetOptions opts;
  opts.frames = frames;
  opts.fps = 16;
  opts.image_width = image.width;
  opts.image_height = image.height;
  opts.hfov_degrees = 60;
  if (preset == client::TrajectoryPreset::kYaw || preset == client::TrajectoryPreset::kOrbit) {
    opts.degrees = amount;
  } else {
    opts.meters = amount;
  }
  auto traj = client::MakePresetTrajectory(preset, opts);
  EXPECT_TRUE(traj.ok()) << traj.status();
  auto png = media::EncodePng(image);
  EXPECT_TRUE(png.ok()) << png.status();
  client::RequestOptions ro;
  ro.output.set_width(image.width);
  ro.output.set_height(image.height);
  ro.output.set_quality(v1::QUALITY_FAST);
  ro.model_options = options;
  auto req = client::BuildRolloutRequestFromImage(model, *png, *traj, seed, ro);
  EXPECT_TRUE(req.ok()) << req.status();
  return req.ok() ? *req : v1::RolloutRequest();
}

int RunCommand(const std::vector<std::string>& argv, std::string* output) {
  const std::string log = MakeTempDir() + "/cmd.log";
  const pid_t pid = SpawnLogged(argv, log);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (output) *output = ReadFile(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace wmserve::testing
