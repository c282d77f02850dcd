#include "scheduler/admission.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace wmserve::scheduler {

SpeedEstimator::SpeedEstimator(SpeedEstimatorOptions options) : options_(options) {
  if (!(options_.smoothing > 0 && options_.smoothing <= 1)) options_.smoothing = 1;
  if (!(options_.prior_seconds_per_frame >= 0)) options_.prior_seconds_per_frame = 0;
}

void SpeedEstimator::Observe(const std::string& model, uint32_t frames, absl::Duration elapsed) {
  if (frames == 0 || elapsed < absl::ZeroDuration() || elapsed == absl::InfiniteDuration()) {
    return;
  }
  const double sample = absl::ToDoubleSeconds(elapsed) / frames;
  auto [it, inserted] = estimates_.try_emplace(model, sample);
  if (!inserted) it->second += options_.smoothing * (sample - it->second);
}

double SpeedEstimator::SecondsPerFrame(const std::string& model) const {
  auto it = estimates_.find(model);
  return it == estimates_.end() ? options_.prior_seconds_per_frame : it->second;
}

absl::Duration SpeedEstimator::Estimate(const std::string& model, uint32_t frames) const {
  return absl::Seconds(SecondsPerFrame(model) * frames);
}

absl::Duration AdmissionController::ClampRetryAfter(absl::Duration d) const {
  d = std::clamp(d, options_.min_retry_after, options_.max_retry_after);
  return std::max(absl::Seconds(1), absl::Ceil(d, absl::Seconds(1)));
}

AdmissionDecision AdmissionController::Decide(const QueuedRollout& candidate,
                                              const std::vector<QueuedRollout>& queue,
                                              const SpeedEstimator& speed, int serving_slots,
                                              absl::Time now) const {
  AdmissionDecision d;
  const int klass = PriorityIndex(candidate.priority);
  const int slots = std::max(0, serving_slots);
  const double spf = speed.SecondsPerFrame(candidate.model);

  // What is queued, seen from the candidate: its class's population, and the same-model work
  // that would start before it (its class and higher ones, assuming FIFO in its class).
  size_t in_class = 0;
  size_t ahead = 0;
  double frames_ahead = 0;
  double frames_higher = 0;  // strictly higher classes only
  double frames_in_class = 0;
  size_t in_class_same_model = 0;
  for (const QueuedRollout& r : queue) {
    const int k = PriorityIndex(r.priority);
    if (k == klass) ++in_class;
    if (r.model != candidate.model || k > klass) continue;
    ++ahead;
    frames_ahead += r.num_frames;
    if (k < klass) frames_higher += r.num_frames;
    if (k == klass) {
      frames_in_class += r.num_frames;
      ++in_class_same_model;
    }
  }
  if (slots > 0) {
    d.estimated_wait = absl::Seconds(frames_ahead * spf / slots);
    d.estimated_run = speed.Estimate(candidate.model, candidate.num_frames);
  }

  // 1. Capacity of the class. A place frees when a rollout of the class starts, i.e. after the
  // higher-class work plus about one typical rollout of the class, spread over the slots.
  const size_t limit = options_.max_queued[klass];
  if (in_class >= limit) {
    absl::Duration retry = options_.max_retry_after;  // no worker ready: wait for one to load
    if (slots > 0) {
      const double typical_frames = in_class_same_model > 0
                                        ? frames_in_class / in_class_same_model
                                        : static_cast<double>(candidate.num_frames);
      retry = absl::Seconds((frames_higher + typical_frames) * spf / slots);
    }
    d.retry_after = ClampRetryAfter(retry);
    d.status = absl::ResourceExhaustedError(absl::StrCat(
        "queue full for priority ", PriorityName(candidate.priority), ": ", in_class,
        " rollouts waiting (limit ", limit, "); retry after ",
        absl::FormatDuration(d.retry_after)));
    return d;
  }

  // 2. Deadline.
  if (candidate.deadline == absl::InfiniteFuture()) return d;
  if (candidate.deadline <= now) {
    d.status = absl::DeadlineExceededError(absl::StrCat(
        "deadline passed ", absl::FormatDuration(now - candidate.deadline), " before admission"));
    return d;
  }
  // Only a measured speed may turn a rollout away: the prior is a guess for an unseen model.
  if (slots == 0 || !speed.Measured(candidate.model)) return d;
  const absl::Duration completion = d.estimated_wait + d.estimated_run;
  if (now + completion > candidate.deadline) {
    d.status = absl::DeadlineExceededError(absl::StrFormat(
        "deadline cannot be met: estimated completion in %s (wait %s behind %d queued rollouts "
        "on %d slots + %d frames at %.3fs/frame), deadline in %s",
        absl::FormatDuration(completion), absl::FormatDuration(d.estimated_wait), ahead, slots,
        candidate.num_frames, spf, absl::FormatDuration(candidate.deadline - now)));
  }
  return d;
}

}  // namespace wmserve::scheduler
