// Admission control: decide at submit time whether a rollout may wait in the queue at all.
// Pure: a decision is a function of (candidate, queue, speed estimate, serving slots, now).
//
// Two checks, in order:
//  1. Capacity. Each priority class has its own bound on waiting rollouts (counted by requested
//     class, so aging never lets a class crowd out another's places). A full class rejects at
//     once with RESOURCE_EXHAUSTED and a retry-after hint.
//  2. Deadline. If the rollout has a deadline, its completion is estimated as
//
//        now + (work queued ahead of it) / slots + own frames * seconds_per_frame
//
//     where "work ahead" is the frames of every queued rollout of the same model in its class
//     or a higher one, times the model's seconds per frame, and `slots` is the number of
//     rollouts the workers serving the model can run at once. A completion after the deadline
//     rejects with DEADLINE_EXCEEDED. The estimate ignores the remaining time of rollouts
//     already running and lower-class rollouts that may age past it (optimistic), and assumes
//     FIFO in its class, where fair sharing may start it sooner (pessimistic for light
//     tenants). It screens out requests that clearly cannot make it; the hub still ends
//     rollouts whose deadline passes while they wait or run.
//
// Speed comes from SpeedEstimator, an EWMA of measured seconds per frame per model.
#ifndef WMSERVE_SCHEDULER_ADMISSION_H_
#define WMSERVE_SCHEDULER_ADMISSION_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "scheduler/queue_policy.h"

namespace wmserve::scheduler {

struct SpeedEstimatorOptions {
  // Seconds per frame assumed for a model never measured. Also the estimate's floor of trust:
  // the first measurement replaces it outright.
  double prior_seconds_per_frame = 0.25;
  // EWMA weight of the newest measurement, in (0, 1]; 1 keeps only the last one.
  double smoothing = 0.2;
};

// Measured generation speed per model: an exponentially weighted moving average of seconds per
// frame, one sample per Observe(). Not thread-safe (the owner serialises).
class SpeedEstimator {
 public:
  explicit SpeedEstimator(SpeedEstimatorOptions options = {});

  // One measurement: `frames` (> 0) took `elapsed` (>= 0). Other samples are ignored.
  void Observe(const std::string& model, uint32_t frames, absl::Duration elapsed);
  // Current estimate; the prior while `model` was never measured.
  double SecondsPerFrame(const std::string& model) const;
  bool Measured(const std::string& model) const { return estimates_.contains(model); }
  // `frames` * SecondsPerFrame(model).
  absl::Duration Estimate(const std::string& model, uint32_t frames) const;

 private:
  SpeedEstimatorOptions options_;
  absl::flat_hash_map<std::string, double> estimates_;
};

struct AdmissionOptions {
  // Most rollouts allowed to wait per requested class, indexed by PriorityIndex.
  std::array<size_t, kNumPriorities> max_queued = {64, 256, 256};
  // retry_after is clamped to [min_retry_after, max_retry_after] and rounded up to seconds.
  absl::Duration min_retry_after = absl::Seconds(1);
  absl::Duration max_retry_after = absl::Minutes(5);
};

struct AdmissionDecision {
  // OK: admit. RESOURCE_EXHAUSTED: its class is full (message names the class, the limit and
  // the retry-after). DEADLINE_EXCEEDED: the estimate misses the deadline (message gives both).
  absl::Status status;
  // > 0 exactly when status is RESOURCE_EXHAUSTED: when trying again is likely to succeed.
  // For the transport layer to put in the status details (e.g. google.rpc.RetryInfo).
  absl::Duration retry_after = absl::ZeroDuration();
  // The estimates behind the decision (zero when there was nothing to estimate with).
  absl::Duration estimated_wait = absl::ZeroDuration();  // until it starts
  absl::Duration estimated_run = absl::ZeroDuration();   // from start to last frame

  bool admitted() const { return status.ok(); }
};

class AdmissionController {
 public:
  explicit AdmissionController(AdmissionOptions options = {}) : options_(options) {}

  // Decides for `candidate` (not yet in `queue`, which holds the rollouts waiting now).
  // `serving_slots` is how many rollouts of candidate.model the live workers serving it can run
  // at once (sum of their max_concurrent); 0 while none is ready. No deadline estimate is made
  // while no worker is ready or the model's speed was never measured (a prior guess must not
  // turn work away): such a rollout is admitted if its class has room and the deadline is still
  // in the future.
  AdmissionDecision Decide(const QueuedRollout& candidate,
                           const std::vector<QueuedRollout>& queue, const SpeedEstimator& speed,
                           int serving_slots, absl::Time now) const;

  const AdmissionOptions& options() const { return options_; }

 private:
  absl::Duration ClampRetryAfter(absl::Duration d) const;
  AdmissionOptions options_;
};

}  // namespace wmserve::scheduler

#endif  // WMSERVE_SCHEDULER_ADMISSION_H_
