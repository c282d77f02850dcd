// Runs real wmserve processes for end-to-end tests: a scheduler (with local workers) on
// loopback ephemeral ports, its log captured to a file that is printed when a test fails.
#ifndef WMSERVE_TESTS_E2E_PROCESS_HARNESS_H_
#define WMSERVE_TESTS_E2E_PROCESS_HARNESS_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "wmserve/v1/rollout.grpc.pb.h"
#include "client/trajectory_presets.h"
#include "worker/media/rgb_image.h"

namespace wmserve::testing {

std::string BinDir();
std::string SchedulerBinary();
std::string WorkerBinary();
std::string WmctlBinary();
// A fresh directory under TEST_TMPDIR or /tmp.
std::string MakeTempDir();

struct SchedulerConfig {
  int local_workers = 1;
  std::string worker_args = "--device cpu --threads 1";
  std::vector<std::string> extra_args;
};

class SchedulerProcess {
 public:
  // Starts wmserve-scheduler and waits until it serves (ready file written).
  static absl::StatusOr<std::unique_ptr<SchedulerProcess>> Start(const SchedulerConfig& config);
  ~SchedulerProcess();  // SIGKILL if still running

  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  pid_t pid() const { return pid_; }
  v1::RolloutService::Stub& stub() { return *stub_; }

  // Waits until `n` workers are READY (BUSY counts too).
  absl::Status WaitForReadyWorkers(int n, absl::Duration timeout);
  absl::StatusOr<v1::ListWorkersResponse> Workers();

  // Sends `sig` and waits up to `timeout` for the exit; returns the exit code (or 128+signal).
  absl::StatusOr<int> SignalAndWait(int sig, absl::Duration timeout);
  // The process's combined log so far.
  std::string Log() const;

 private:
  SchedulerProcess() = default;
  pid_t pid_ = -1;
  std::string dir_;
  std::string address_;
  std::string metrics_address_;
  std::unique_ptr<v1::RolloutService::Stub> stub_;
};

// A textured, non-repeating test image (smooth gradients + shapes) that makes shifts and PSNR
// measurable.
media::RgbImage MakeTestImage(int width, int height, int seed = 0);

// Plain HTTP GET on loopback; returns the body.
absl::StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path);

// A warp-model request over a preset trajectory (hfov 60 degrees, 16 fps, x264 fast) whose
// output size is the image's, so the first frame must reproduce `image`. `amount` is degrees
// for yaw/orbit, metres for pan/forward.
v1::RolloutRequest MakeWarpRequest(client::TrajectoryPreset preset, int frames, double amount,
                                   const media::RgbImage& image, uint64_t seed = 7);
// The same for any model, with model_options.
v1::RolloutRequest MakeModelRequest(const std::string& model, client::TrajectoryPreset preset,
                                    int frames, double amount, const media::RgbImage& image,
                                    uint64_t seed = 7,
                                    const std::map<std::string, std::string>& options = {});

// Starts `argv` with stdout+stderr appended to `log_path` (if non-empty) and a parent-death
// signal, so it never outlives the test. Returns the pid, or -1.
pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log_path);

// Runs a command, returns its exit code; stdout+stderr go to `output` if non-null.
int RunCommand(const std::vector<std::string>& argv, std::string* output);

}  // namespace wmserve::testing

#endif  // WMSERVE_TESTS_E2E_PROCESS_HARNESS_H_
