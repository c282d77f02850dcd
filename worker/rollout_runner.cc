#include "worker/rollout_runner.h"

#include <array>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/logging.h"
#include "worker/media/fmp4_encoder.h"
#include "worker/media/image_io.h"

namespace wmserve::worker {
namespace {

using log::Kv;

v1::Stage ToProtoStage(ModelStage stage) {
  switch (stage) {
    case ModelStage::kImageEncode: return v1::STAGE_IMAGE_ENCODE;
    case ModelStage::kBackbone: return v1::STAGE_BACKBONE;
    case ModelStage::kRefiner: return v1::STAGE_REFINER;
    case ModelStage::kDecode: return v1::STAGE_DECODE;
  }
  return v1::STAGE_UNSPECIFIED;
}

media::EncoderPreset ToPreset(v1::Quality quality) {
  switch (quality) {
    case v1::QUALITY_FAST: return media::EncoderPreset::kFast;
    case v1::QUALITY_HIGH: return media::EncoderPreset::kHigh;
    default: return media::EncoderPreset::kBalanced;
  }
}

// Per-stage wall time, shared by the rollout and encoder threads.
class StageClock {
 public:
  void Add(v1::Stage stage, absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    totals_[stage] += d;
  }
  void FillFinal(v1::Final& final) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (const auto& [stage, d] : totals_) {
      v1::StageTiming* t = final.add_stage_timings();
      t->set_stage(stage);
      t->set_seconds(absl::ToDoubleSeconds(d));
    }
  }

 private:
  absl::Mutex mu_;
  std::map<v1::Stage, absl::Duration> totals_ ABSL_GUARDED_BY(mu_);
};

const char* StageMetricName(ModelStage stage) { return ModelStageName(stage); }

// A generated chunk on its way to the encoder, with where its time went so far.
struct PendingChunk {
  FrameChunk frames;
  v1::ChunkTimings timings;
};

// Single-producer single-consumer hand-off of decoded chunks to the encoder thread. Bounded so
// the model cannot run far ahead of the encoder (memory stays flat for long rollouts).
class ChunkQueue {
 public:
  explicit ChunkQueue(size_t capacity) : capacity_(capacity) {}

  // Blocks while full; false if the consumer stopped (encoder failed) or `stop` was set.
  bool Push(PendingChunk chunk, const std::atomic<bool>& stop) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto room = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return items_.size() < capacity_ || consumer_gone_;
    };
    while (!mu_.AwaitWithTimeout(absl::Condition(&room), absl::Milliseconds(50))) {
      if (stop.load()) return false;
    }
    if (consumer_gone_) return false;
    items_.push_back(std::move(chunk));
    return true;
  }
  void Close() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // Blocks until a chunk or Close(); nullopt when closed and drained.
  std::optional<PendingChunk> Pop() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !items_.empty() || closed_; };
    mu_.Await(absl::Condition(&ready));
    if (items_.empty()) return std::nullopt;
    PendingChunk c = std::move(items_.front());
    items_.pop_front();
    return c;
  }
  void ConsumerGone() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    consumer_gone_ = true;
    items_.clear();
  }

 private:
  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<PendingChunk> items_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool consumer_gone_ ABSL_GUARDED_BY(mu_) = false;
};

class Control : public RolloutControl {
 public:
  Control(const std::atomic<bool>& cancelled, RolloutEventSink& sink, StageClock& clock,
          uint32_t frames_total, const RolloutRunnerOptions& options)
      : cancelled_(cancelled), sink_(sink), clock_(clock), frames_total_(frames_total),
        progress_interval_(options.progress_interval), metrics_(options.metrics),
        memory_(options.memory) {}

  bool cancelled() const override { return cancelled_.load(std::memory_order_relaxed); }

  void OnStep(ModelStage stage, int step, int total_steps) override {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    // Step duration = gap between consecutive steps of a stage within one chunk.
    auto& previous = last_step_[static_cast<int>(stage)];
    if (metrics_ && previous.first == step - 1 && previous.second != absl::InfinitePast()) {
      metrics_->DenoiseStep(StageMetricName(stage), absl::ToDoubleSeconds(now - previous.second));
    }
    previous = {step, now};
    const bool last = total_steps > 0 && step + 1 >= total_steps;
    if (!last && now - last_progress_ < progress_interval_) return;
    last_progress_ = now;
    v1::RolloutEvent event;
    v1::Progress* p = event.mutable_progress();
    p->set_stage(ToProtoStage(stage));
    p->set_step(static_cast<uint32_t>(step + 1));
    p->set_total_steps(static_cast<uint32_t>(std::max(0, total_steps)));
    p->set_frames_done(frames_done_);
    p->set_frames_total(frames_total_);
    sink_.Emit(std::move(event));
  }

  void AddStageTime(ModelStage stage, absl::Duration elapsed) override {
    absl::MutexLock lock(&mu_);
    clock_.Add(ToProtoStage(stage), elapsed);
    const double secs = absl::ToDoubleSeconds(elapsed);
    switch (stage) {
      case ModelStage::kImageEncode:
        chunk_.set_image_encode_s(chunk_.image_encode_s() + secs);
        break;
      case ModelStage::kBackbone: chunk_.set_backbone_s(chunk_.backbone_s() + secs); break;
      case ModelStage::kRefiner: chunk_.set_refiner_s(chunk_.refiner_s() + secs); break;
      case ModelStage::kDecode: chunk_.set_decode_s(chunk_.decode_s() + secs); break;
    }
    if (metrics_) {
      if (memory_ && memory_->is_cuda()) {
        if (auto peak = memory_->TakePeakAllocated()) {
          metrics_->SetPeakMemory(memory_->gpu(), memory_->uuid(), StageMetricName(stage),
                                  static_cast<double>(*peak));
        }
      }
    }
  }

  // Called after each NextChunk; returns what accumulated since the previous call. (A model that
  // pipelines its stages works on several chunks at once; their times land on the chunk that
  // is returned next.)
  v1::ChunkTimings TakeChunkTimings() {
    absl::MutexLock lock(&mu_);
    if (metrics_) {
      const std::pair<const char*, double> stages[] = {{"image_encode", chunk_.image_encode_s()},
                                                       {"backbone", chunk_.backbone_s()},
                                                       {"refiner", chunk_.refiner_s()},
                                                       {"decode", chunk_.decode_s()}};
      for (const auto& [name, secs] : stages) {
        if (secs > 0) metrics_->StageTime(name, secs);
      }
    }
    v1::ChunkTimings out = std::move(chunk_);
    chunk_.Clear();
    for (auto& l : last_step_) l = {-2, absl::InfinitePast()};
    return out;
  }

  void set_frames_total(uint32_t n) {
    absl::MutexLock lock(&mu_);
    frames_total_ = n;
  }
  void set_frames_done(uint32_t n) {
    absl::MutexLock lock(&mu_);
    frames_done_ = n;
  }

 private:
  // The model may call OnStep / AddStageTime from several threads (model.h RolloutControl).
  absl::Mutex mu_;
  const std::atomic<bool>& cancelled_;
  RolloutEventSink& sink_;
  StageClock& clock_;
  uint32_t frames_total_;
  const absl::Duration progress_interval_;
  metrics::WorkerMetrics* const metrics_;
  DeviceMemoryProbe* const memory_;
  uint32_t frames_done_ = 0;
  absl::Time last_progress_ = absl::InfinitePast();
  v1::ChunkTimings chunk_;
  std::array<std::pair<int, absl::Time>, 4> last_step_{
      {{-2, absl::InfinitePast()}, {-2, absl::InfinitePast()}, {-2, absl::InfinitePast()},
       {-2, absl::InfinitePast()}}};
};

RolloutSpec BuildSpec(const v1::RolloutRequest& request, media::RgbImage image,
                      const ModelDescriptor& descriptor) {
  RolloutSpec spec;
  spec.image = std::move(image);
  spec.width = request.output().width() ? static_cast<int>(request.output().width())
                                        : descriptor.native_width;
  spec.height = request.output().height() ? static_cast<int>(request.output().height())
                                          : descriptor.native_height;
  spec.fps = request.fps();
  spec.seed = request.seed();
  for (const auto& [k, v] : request.model_options()) spec.options[k] = v;
  const auto& traj = request.trajectory();
  spec.cameras.resize(traj.poses_size());
  for (int i = 0; i < traj.poses_size(); ++i) {
    CameraFrame& cam = spec.cameras[i];
    for (int j = 0; j < 16 && j < traj.poses(i).c2w_size(); ++j) cam.c2w[j] = traj.poses(i).c2w(j);
    const v1::Intrinsics& k = traj.intrinsics(traj.intrinsics_size() == 1 ? 0 : i);
    cam.fx = k.fx();
    cam.fy = k.fy();
    cam.cx = k.cx();
    cam.cy = k.cy();
  }
  return spec;
}

v1::RolloutDone Fail(const std::string& rollout_id, const absl::Status& status) {
  v1::RolloutDone done;
  done.set_rollout_id(rollout_id);
  done.set_status_code(static_cast<int>(status.code()));
  done.set_status_message(std::string(status.message()));
  return done;
}

// The encoder thread's work: encode each chunk into one media segment and emit it. FINAL and
// PREVIEW chunks are two videos: each kind has its own encoder and chunk indices.
struct EncoderLoop {
  media::Fmp4Encoder* encoder;
  media::Fmp4Encoder* preview_encoder;  // null without previews
  ChunkQueue* queue;
  RolloutEventSink* sink;
  StageClock* clock;
  metrics::WorkerMetrics* metrics;
  const std::atomic<bool>* cancelled;
  double fps;
  absl::Status status;
  uint32_t chunks = 0;  // FINAL chunks and frames
  uint32_t frames = 0;
  uint32_t preview_chunks = 0;
  uint64_t bytes = 0;

  void Run() {
    while (std::optional<PendingChunk> pending = queue->Pop()) {
      if (cancelled->load()) continue;  // drain without work so the producer never blocks
      const FrameChunk* chunk = &pending->frames;
      const bool preview = chunk->kind == ChunkKind::kPreview;
      if (preview && preview_encoder == nullptr) {
        status = absl::InternalError("the model sent a PREVIEW chunk without announcing previews");
        queue->ConsumerGone();
        return;
      }
      const absl::Time start = absl::Now();
      absl::StatusOr<std::string> segment = (preview ? preview_encoder : encoder)
                                                ->EncodeSegment(chunk->rgb.data(),
                                                                chunk->frame_count);
      if (!segment.ok()) {
        status = segment.status();
        queue->ConsumerGone();
        return;
      }
      const absl::Duration took = absl::Now() - start;
      clock->Add(v1::STAGE_VIDEO_ENCODE, took);
      if (metrics) {
        metrics->StageTime("video_encode", absl::ToDoubleSeconds(took));
        if (!preview) metrics->FramesGenerated("video_encode", chunk->frame_count);
      }
      v1::RolloutEvent event;
      v1::VideoChunk* out = event.mutable_chunk();
      *out->mutable_timings() = std::move(pending->timings);
      out->mutable_timings()->set_video_encode_s(absl::ToDoubleSeconds(took));
      out->set_index(preview ? preview_chunks : chunks);
      if (preview) out->set_kind(v1::CHUNK_KIND_PREVIEW);
      out->set_first_frame(static_cast<uint32_t>(chunk->first_frame));
      out->set_frame_count(static_cast<uint32_t>(chunk->frame_count));
      out->set_presentation_time_s(chunk->first_frame / fps);
      out->set_encoded_at_unix_nanos(absl::ToUnixNanos(absl::Now()));
      bytes += segment->size();
      out->set_data(*std::move(segment));
      const absl::Time send_start = absl::Now();
      sink->Emit(std::move(event));
      const absl::Duration send = absl::Now() - send_start;
      clock->Add(v1::STAGE_SEND, send);
      if (metrics) metrics->StageTime("send", absl::ToDoubleSeconds(send));
      if (preview) {
        ++preview_chunks;
        continue;
      }
      ++chunks;
      frames += static_cast<uint32_t>(chunk->frame_count);
    }
  }
};

v1::RolloutDone RunRolloutOrThrow(Model& model, const std::string& rollout_id,
                                  const v1::RolloutRequest& request,
                                  const std::atomic<bool>& cancelled, RolloutEventSink& sink,
                                  const RolloutRunnerOptions& options) {
  metrics::WorkerMetrics* const metrics = options.metrics;
  StageClock clock;
  const absl::Time decode_start = absl::Now();
  absl::StatusOr<media::RgbImage> image = media::DecodeImage(request.image());
  if (!image.ok()) return Fail(rollout_id, image.status());
  const absl::Duration image_decode = absl::Now() - decode_start;

  RolloutSpec spec = BuildSpec(request, *std::move(image), model.descriptor());
  media::EncoderOptions enc_options;
  enc_options.width = spec.width;
  enc_options.height = spec.height;
  enc_options.fps = spec.fps;
  enc_options.preset = ToPreset(request.output().quality());
  if (request.output().crf() > 0) enc_options.crf = static_cast<int>(request.output().crf());
  absl::StatusOr<std::unique_ptr<media::Fmp4Encoder>> encoder =
      media::Fmp4Encoder::Create(enc_options);
  if (!encoder.ok()) return Fail(rollout_id, encoder.status());

  Control control(cancelled, sink, clock, request.num_frames(), options);
  // Decoding the request image is part of the image-encode stage.
  control.AddStageTime(ModelStage::kImageEncode, image_decode);
  absl::StatusOr<std::unique_ptr<ModelRollout>> rollout = model.StartRollout(spec, control);
  if (!rollout.ok()) return Fail(rollout_id, rollout.status());
  const uint32_t frames_expected = (*rollout)->output_frames() >= 0
                                       ? static_cast<uint32_t>((*rollout)->output_frames())
                                       : request.num_frames();
  control.set_frames_total(frames_expected);
  std::unique_ptr<media::Fmp4Encoder> preview_encoder;
  if ((*rollout)->emits_previews()) {
    absl::StatusOr<std::unique_ptr<media::Fmp4Encoder>> created =
        media::Fmp4Encoder::Create(enc_options);
    if (!created.ok()) return Fail(rollout_id, created.status());
    preview_encoder = *std::move(created);
  }

  {
    v1::RolloutEvent init;
    v1::StreamInit* si = init.mutable_stream_init();
    si->set_mime_type((*encoder)->mime_type());
    si->set_width(static_cast<uint32_t>(spec.width));
    si->set_height(static_cast<uint32_t>(spec.height));
    si->set_fps(spec.fps);
    si->set_init_segment((*encoder)->init_segment());
    si->set_frames_total(frames_expected);
    if (preview_encoder) si->set_preview_init_segment(preview_encoder->init_segment());
    sink.Emit(std::move(init));
  }

  ChunkQueue queue(/*capacity=*/2);
  v1::ChunkTimings carried = control.TakeChunkTimings();  // image encode goes on chunk 0
  EncoderLoop loop{encoder->get(), preview_encoder.get(), &queue, &sink, &clock, metrics,
                   &cancelled, spec.fps, absl::OkStatus()};
  std::thread encoder_thread([&loop] { loop.Run(); });

  absl::Status status;
  uint32_t frames_generated = 0;
  for (;;) {
    if (cancelled.load()) {
      status = absl::CancelledError("rollout cancelled");
      break;
    }
    absl::StatusOr<std::optional<FrameChunk>> chunk = absl::InternalError("model threw");
    try {
      chunk = (*rollout)->NextChunk(control);
    } catch (const std::exception& e) {
      // The encoder thread is running: an exception must not unwind past it.
      chunk = absl::InternalError(absl::StrCat("model failed: ", e.what()));
    }
    if (!chunk.ok()) {
      status = chunk.status();
      break;
    }
    if (!chunk->has_value()) break;
    if ((*chunk)->kind == ChunkKind::kFinal) {
      if (metrics) metrics->FramesGenerated("backbone", (*chunk)->frame_count);
      frames_generated += static_cast<uint32_t>((*chunk)->frame_count);
      control.set_frames_done(frames_generated);
    }
    PendingChunk pending{std::move(**chunk), control.TakeChunkTimings()};
    if (carried.image_encode_s() > 0) {
      pending.timings.set_image_encode_s(carried.image_encode_s());
      carried.Clear();
    }
    if (!queue.Push(std::move(pending), cancelled)) break;  // encoder failed or cancelled
  }
  queue.Close();
  encoder_thread.join();
  if (status.ok() && !loop.status.ok()) status = loop.status;
  if (status.ok() && cancelled.load()) status = absl::CancelledError("rollout cancelled");
  if (status.ok() && loop.frames != frames_expected) {
    status = absl::InternalError(absl::StrCat("model produced ", loop.frames, " frames, expected ",
                                              frames_expected));
  }
  if (!status.ok()) return Fail(rollout_id, status);

  v1::RolloutDone done;
  done.set_rollout_id(rollout_id);
  v1::Final* final = done.mutable_final();
  final->set_outcome(v1::OUTCOME_SUCCEEDED);
  clock.FillFinal(*final);
  final->set_frames_sent(loop.frames);
  final->set_chunks_sent(loop.chunks);
  final->set_bytes_sent(loop.bytes + (*encoder)->init_segment().size() +
                        (preview_encoder ? preview_encoder->init_segment().size() : 0));
  return done;
}

}  // namespace

v1::RolloutDone RunRollout(Model& model, const std::string& rollout_id,
                           const v1::RolloutRequest& request, const std::atomic<bool>& cancelled,
                           RolloutEventSink& sink, const RolloutRunnerOptions& options) {
  // Models and encoders report errors as absl::Status; this is the last line of defence so one
  // bad rollout can never take the worker process down.
  try {
    return RunRolloutOrThrow(model, rollout_id, request, cancelled, sink, options);
  } catch (const std::exception& e) {
    return Fail(rollout_id, absl::InternalError(absl::StrCat("rollout failed: ", e.what())));
  }
}

}  // namespace wmserve::worker
