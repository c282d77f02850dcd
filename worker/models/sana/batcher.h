// File: co-batching of the streaming rollouts one worker runs on one model.
//
// Depends on LibTorch and the C++ standard library only.
//
// Every rollout keeps its own thread (the runner's rollout thread: it decodes and hands frames to
// the encoder between chunks), but its Stage-1 chunks go through a StreamingBatcher shared by all
// rollouts of the model. The batcher gathers the rollouts that are waiting for their next chunk,
// groups those whose chunks have equal StreamingBatchShape, and runs each group as one
// StreamingRollout::NextChunkBatch: one batched forward per denoising step instead of one forward
// per rollout. Rollouts join and leave the batch only at chunk boundaries (a cancel leaves within
// one step, see NextChunkBatch).
//
// Gathering. A batch starts as soon as every joined rollout is waiting (or max_batch are), or
// `gather_fraction` of the last batch's run time (capped by max_gather) after the first waiting
// rollout arrived or the last batch ended, whichever is later: a
// rollout still decoding its previous chunk usually arrives within that window, and one that is
// stalled (a slow client, a rollout that is about to finish) delays the others by at most the
// window. Without any wait, two rollouts that arrive a few milliseconds apart would alternate
// forever and never share a forward.
//
// One batch runs at a time (the thread that finds the batch due runs it; the others sleep), so
// the model sees one forward at a time, as on a single GPU stream.
#ifndef WMSERVE_WORKER_MODELS_SANA_BATCHER_H_
#define WMSERVE_WORKER_MODELS_SANA_BATCHER_H_

#include <ATen/core/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <vector>

#include "worker/models/sana/rollout.h"

namespace wmserve::worker::sana {

class StreamingBatcher {
 public:
  struct Options {
    int max_batch = 4;  // rollouts in one batched forward; 1 = no co-batching
    double gather_fraction = 0.25;
    std::chrono::microseconds max_gather{50000};
    // Called after every batch (from the thread that ran it): rollouts in it and its run time.
    std::function<void(int batch_size, double seconds)> on_batch;
  };

  struct Stats {
    uint64_t batches = 0;
    uint64_t chunks = 0;                // rollout-chunks produced (sum of batch sizes)
    std::vector<uint64_t> batches_by_size;  // index = batch size (0 unused)
  };

  explicit StreamingBatcher(Options options);
  StreamingBatcher(const StreamingBatcher&) = delete;
  StreamingBatcher& operator=(const StreamingBatcher&) = delete;

  // A rollout that will ask for chunks: while a Membership is alive the batcher expects it back
  // at every chunk boundary (and waits up to the gather window for it). Release it when the
  // rollout ends, whatever the reason.
  class Membership {
   public:
    ~Membership();
    Membership(const Membership&) = delete;
    Membership& operator=(const Membership&) = delete;

   private:
    friend class StreamingBatcher;
    explicit Membership(StreamingBatcher* batcher) : batcher_(batcher) {}
    StreamingBatcher* batcher_;
  };
  std::unique_ptr<Membership> Join();

  // The next chunk of `rollout` (as StreamingRollout::NextChunk), run in a batch with other
  // waiting rollouts of compatible shape. Blocks. `on_step` runs before every forward of the
  // chunk (on the batch's thread); `cancelled` is polled while waiting for a batch to start.
  // Throws RolloutCancelled when either asks to stop, and rethrows an error of the batch's
  // forward (an out-of-memory reaches every member of that batch).
  at::Tensor NextChunk(StreamingRollout& rollout, const StepCallback& on_step,
                       const std::function<bool()>& cancelled);

  Stats stats() const;
  const Options& options() const { return options_; }

 private:
  struct Request {
    StreamingRollout* rollout = nullptr;
    StepCallback on_step;
    std::chrono::steady_clock::time_point arrived;
    bool taken = false, done = false;
    StreamingRollout::ChunkOutcome outcome;
    std::exception_ptr error;
  };

  // Under mu_: whether a batch should start now, and otherwise until when to sleep.
  bool BatchDue(std::chrono::steady_clock::time_point now,
                std::chrono::steady_clock::time_point* wake) const;
  // Runs every pending request, in groups of equal shape (called without mu_ held).
  void RunBatches(std::vector<std::shared_ptr<Request>> taken);

  const Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int members_ = 0;
  bool running_ = false;
  std::list<std::shared_ptr<Request>> pending_;
  double last_batch_seconds_ = 0;
  std::chrono::steady_clock::time_point last_batch_end_{};
  Stats stats_;
};

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_BATCHER_H_
