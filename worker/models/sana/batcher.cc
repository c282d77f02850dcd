// Co-batching of streaming rollouts (see batcher.h).
#include "worker/models/sana/batcher.h"

#include <algorithm>
#include <string>
#include <utility>

#include "worker/models/sana/errors.h"

namespace wmserve::worker::sana {
namespace {

using Clock = std::chrono::steady_clock;

// How often a rollout waiting for its batch to start checks its cancel flag.
constexpr std::chrono::milliseconds kCancelPoll{10};

}  // namespace

StreamingBatcher::StreamingBatcher(Options options) : options_(std::move(options)) {
  if (options_.max_batch < 1) throw ConfigError("StreamingBatcher: max_batch must be >= 1");
  if (!(options_.gather_fraction >= 0)) {
    throw ConfigError("StreamingBatcher: gather_fraction must be >= 0");
  }
  stats_.batches_by_size.assign(options_.max_batch + 1, 0);
}

StreamingBatcher::Membership::~Membership() {
  std::lock_guard<std::mutex> lock(batcher_->mu_);
  --batcher_->members_;
  // Waiting rollouts may now be everyone that is left.
  batcher_->cv_.notify_all();
}

std::unique_ptr<StreamingBatcher::Membership> StreamingBatcher::Join() {
  std::lock_guard<std::mutex> lock(mu_);
  ++members_;
  return std::unique_ptr<Membership>(new Membership(this));
}

StreamingBatcher::Stats StreamingBatcher::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

bool StreamingBatcher::BatchDue(Clock::time_point now, Clock::time_point* wake) const {
  *wake = Clock::time_point::max();
  if (pending_.empty()) return false;
  const int waiting = static_cast<int>(pending_.size());
  if (waiting >= members_ || waiting >= options_.max_batch) return true;
  // Before the first batch there is no run time to scale by: rollouts that start together
  // (a burst of requests) get the whole max_gather to line up.
  const auto window =
      stats_.batches == 0
          ? options_.max_gather
          : std::min<std::chrono::microseconds>(
                options_.max_gather,
                std::chrono::microseconds(static_cast<int64_t>(
                    std::min(last_batch_seconds_ * options_.gather_fraction, 3600.0) * 1e6)));
  // The window opens when the first rollout arrived or when the last batch ended, whichever is
  // later: rollouts of that batch are only now returning to decode, and arrive a little later.
  const Clock::time_point deadline = std::max(pending_.front()->arrived, last_batch_end_) + window;
  if (now >= deadline) return true;
  *wake = deadline;
  return false;
}

at::Tensor StreamingBatcher::NextChunk(StreamingRollout& rollout, const StepCallback& on_step,
                                       const std::function<bool()>& cancelled) {
  auto request = std::make_shared<Request>();
  request->rollout = &rollout;
  request->on_step = on_step;
  request->arrived = Clock::now();

  std::unique_lock<std::mutex> lock(mu_);
  pending_.push_back(request);
  cv_.notify_all();
  while (!request->done) {
    if (!request->taken && cancelled && cancelled()) {
      pending_.remove(request);
      cv_.notify_all();
      throw RolloutCancelled("StreamingBatcher: cancelled while waiting for a batch");
    }
    const Clock::time_point now = Clock::now();
    Clock::time_point wake;
    if (!running_ && BatchDue(now, &wake)) {
      // This thread runs the batch (its own request included) on behalf of everyone waiting;
      // their threads stay blocked here, so their rollouts and callbacks are used by one thread
      // at a time (the mutex hand-off orders the accesses).
      running_ = true;
      std::vector<std::shared_ptr<Request>> taken(pending_.begin(), pending_.end());
      pending_.clear();
      for (const auto& r : taken) r->taken = true;
      lock.unlock();
      RunBatches(std::move(taken));
      lock.lock();
      running_ = false;
      cv_.notify_all();
      continue;
    }
    cv_.wait_until(lock, std::min(wake, now + kCancelPoll));
  }
  lock.unlock();
  if (request->error) std::rethrow_exception(request->error);
  if (request->outcome.cancelled) {
    throw RolloutCancelled("StreamingBatcher: cancelled before forward " +
                           std::to_string(request->outcome.cancelled_before) + " of a chunk");
  }
  return std::move(request->outcome.latents);
}

void StreamingBatcher::RunBatches(std::vector<std::shared_ptr<Request>> taken) {
  // Groups of equal next-chunk shape, at most max_batch each, in arrival order.
  struct Group {
    StreamingBatchShape shape;
    std::vector<std::shared_ptr<Request>> requests;
  };
  std::vector<Group> groups;
  for (auto& request : taken) {
    StreamingBatchShape shape;
    try {
      shape = request->rollout->NextChunkShape();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      request->error = std::current_exception();
      request->done = true;
      cv_.notify_all();
      continue;
    }
    auto fits = [&](const Group& g) {
      return g.shape == shape && static_cast<int>(g.requests.size()) < options_.max_batch;
    };
    auto it = std::find_if(groups.begin(), groups.end(), fits);
    if (it == groups.end()) it = groups.insert(groups.end(), Group{shape, {}});
    it->requests.push_back(std::move(request));
  }

  for (Group& group : groups) {
    std::vector<StreamingRollout*> rollouts;
    std::vector<StepCallback> callbacks;
    for (const auto& r : group.requests) {
      rollouts.push_back(r->rollout);
      callbacks.push_back(r->on_step);
    }
    const Clock::time_point start = Clock::now();
    std::vector<StreamingRollout::ChunkOutcome> outcomes;
    std::exception_ptr error;
    try {
      outcomes = StreamingRollout::NextChunkBatch(rollouts, callbacks);
    } catch (...) {
      error = std::current_exception();
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const int size = static_cast<int>(group.requests.size());
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < group.requests.size(); ++i) {
        Request& r = *group.requests[i];
        if (error) {
          r.error = error;
        } else {
          r.outcome = std::move(outcomes[i]);
        }
        r.done = true;
      }
      ++stats_.batches;
      stats_.chunks += static_cast<uint64_t>(size);
      ++stats_.batches_by_size[size];
      last_batch_seconds_ = seconds;
      last_batch_end_ = Clock::now();
      cv_.notify_all();
    }
    if (options_.on_batch) options_.on_batch(size, seconds);
  }
}

}  // namespace wmserve::worker::sana
