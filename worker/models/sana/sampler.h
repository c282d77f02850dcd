// File: sampling math of SANA-WM's Stage-1 rollouts (spec §4): noise schedules, Euler/CFG step
// helpers, the streaming chunk plan, per-frame timesteps and the softmax KV window rule.
//
// Depends on LibTorch and the C++ standard library only. Everything here is a pure function of
// its arguments: no model, no cache, no randomness. The rollout loops that call the model live
// elsewhere; they take their numbers from here.
//
// ---------------------------------------------------------------------------------------------
// The three samplers of spec §4 and the pieces they use:
//
//  * Bidirectional (`LTXFlowEuler`, §4.1): BidirectionalSchedule(60, 9.8), model input batched
//    [uncond, cond], CfgCombine(..., 5.0), PerFrameEulerStep over all latent frames with
//    FrameTimesteps(..., {0, T}, t) (frame 0 is the clean image latent, t = 0, never updated).
//  * Chunk-causal teacher (`ChunkFlowEuler`, §4.2): the same schedule, staggered per chunk by
//    ChunkCausalTeacherSchedule over StreamingChunkPlan's chunks; each global step steps all
//    active chunks at once with PerFrameEulerStep (finished chunks sit at t = 0 and stay put).
//  * Distilled streaming (`SelfForcingFlowEulerCamCtrl`, §4.3): StreamingSchedule() (sigma 1.0,
//    0.96, 0.889, 0.727, 0; no shift, no CFG), StreamingChunkPlan (4, 3, 3, ... latent frames);
//    per chunk 4 denoising forwards with FrameTimesteps(chunk, t) (frame 0 forced to 0 inside
//    chunk 0) and one KV-save forward of the clean chunk at t = 0; the softmax blocks keep the
//    K/V of the chunks KvWindowRule selects (sink chunk 0 + the latest chunk).
//
// Schedules reproduce diffusers' FlowMatchEulerDiscreteScheduler bit for bit, including its
// float32/float64 mix (see FlowMatchSchedule). Step helpers reproduce the diffusers per-token
// branch (`step(..., per_token_timesteps=...)`) that all three Sana samplers use: float32 math,
// result cast back to the latent dtype.
//
// Errors: InvalidInputError (errors.h) for arguments the rollout cannot use (frame counts,
// step lists, shapes), with a message naming the function and the offending value.
#ifndef WMSERVE_WORKER_MODELS_SANA_SAMPLER_H_
#define WMSERVE_WORKER_MODELS_SANA_SAMPLER_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <vector>

namespace wmserve::worker::sana {

// ---------------------------------------------------------------------------------------------
// Constants of the released samplers.

// diffusers `num_train_timesteps`: timestep = 1000 * sigma.
inline constexpr int kNumTrainTimesteps = 1000;

// §4.1 bidirectional: `inference_flow_shift` 9.8, 60 steps, CFG 5.
inline constexpr int kBidirectionalSteps = 60;
inline constexpr double kBidirectionalShift = 9.8;
inline constexpr double kBidirectionalCfgScale = 5.0;

// §4.3 distilled streaming: `denoising_step_list` (timesteps; sigma = t / 1000), no CFG.
inline constexpr std::array<int, 5> kStreamingDenoisingStepList = {1000, 960, 889, 727, 0};
inline constexpr double kStreamingCfgScale = 1.0;
// Latent frames per streaming chunk after the first ("first_chunk_plus_one": the first chunk
// has one more, the clean condition frame).
inline constexpr int64_t kStreamingChunkFrames = 3;
// Softmax KV window of the streaming model: `num_cached_blocks` 2 with `sink_token`.
inline constexpr int64_t kStreamingNumCachedBlocks = 2;
inline constexpr bool kStreamingSinkChunk = true;
// The largest softmax key window (cached + current chunk), in latent frames: 4 + 3 + 3.
inline constexpr int64_t kStreamingMaxKeyFrames = 10;

// VAE temporal stride: F = 8k + 1 pixel frames <-> k + 1 latent frames.
inline constexpr int64_t kVaeTemporalStride = 8;

// diffusers' per-token step picks as the next sigma the largest schedule sigma below
// (current sigma - this tolerance).
inline constexpr double kPerTokenSigmaTolerance = 1e-6;

// ---------------------------------------------------------------------------------------------
// Schedules.

// What `scheduler.set_timesteps(...)` leaves in `scheduler.sigmas` / `scheduler.timesteps`.
struct SigmaSchedule {
  std::vector<float> sigmas;     // num_steps + 1 values, strictly decreasing, back() == 0
  std::vector<float> timesteps;  // num_steps values, float32(sigmas[i] * 1000)
  int64_t num_steps() const { return static_cast<int64_t>(timesteps.size()); }
  // float32 1-D tensors of the values above, on `device`.
  at::Tensor SigmasTensor(c10::Device device = c10::Device(c10::kCPU)) const;
  at::Tensor TimestepsTensor(c10::Device device = c10::Device(c10::kCPU)) const;
};

// The time shift sigma' = shift * s / (1 + (shift - 1) * s), in double.
double ShiftSigma(double sigma, double shift);

// The training table `FlowMatchEulerDiscreteScheduler(shift=shift)` builds at init, in float32
// as diffusers computes it: s_i = i / N for i = N, N-1, ..., 1, then shifted. N values; front()
// is sigma_max (1.0), back() is sigma_min (the shifted 1/N: 0.0097145 for shift 9.8).
std::vector<float> FlowMatchTrainSigmas(double shift, int num_train_timesteps = kNumTrainTimesteps);

// `FlowMatchEulerDiscreteScheduler(shift=shift)` followed by `set_timesteps(steps)`:
//   1. init: sigma_max, sigma_min = ends of FlowMatchTrainSigmas(shift) (float32 values);
//   2. t = np.linspace(1000 sigma_max, 1000 sigma_min, steps) in float64, sigma = t / 1000;
//   3. the shift is applied AGAIN (float64), then rounded to float32;
//   4. timesteps = float32(sigma * 1000); sigma 0 is appended.
// So the last non-zero sigma is shift applied twice to 1/1000 (0.0877 for shift 9.8), not
// sigma_min. Throws InvalidInputError unless steps >= 1 and shift > 0 (finite).
SigmaSchedule FlowMatchSchedule(int steps, double shift,
                                int num_train_timesteps = kNumTrainTimesteps);

// §4.1: FlowMatchSchedule(steps, shift) with the released defaults (60 steps, shift 9.8).
SigmaSchedule BidirectionalSchedule(int steps = kBidirectionalSteps,
                                    double shift = kBidirectionalShift);

// A distilled student's explicit schedule (`denoising_step_list`, timesteps in (0, 1000]
// strictly decreasing, ending with 0): `FlowMatchEulerDiscreteScheduler(shift=1.0)` +
// `set_timesteps(sigmas=[t / 1000 for t in list[:-1]])`: sigmas are float32(t / 1000) verbatim
// (no shift), timesteps float32(sigma * 1000) (exactly the list's integers for the released
// lists), sigma 0 appended. Throws InvalidInputError for malformed lists.
SigmaSchedule ScheduleFromStepList(const std::vector<int>& denoising_step_list);

// §4.3: ScheduleFromStepList(kStreamingDenoisingStepList): sigmas [1.0, 0.96, 0.889, 0.727, 0],
// timesteps [1000, 960, 889, 727].
SigmaSchedule StreamingSchedule();

// ---------------------------------------------------------------------------------------------
// Step helpers. Latents are (B, C, T, H, W) with latent frames on dim 2; velocities v are the
// model output (v = eps - x0, spec §1.2), same shape. All math is float32; results have x's
// dtype.

// x + (sigma_next - sigma) * v, with dt = float32(sigma_next) - float32(sigma) in float32. Any
// shapes that broadcast.
at::Tensor EulerStep(const at::Tensor& x, const at::Tensor& v, double sigma, double sigma_next);

// Classifier-free guidance v_u + scale * (v_c - v_u), in the inputs' dtype, with the reference's
// operation order (sub, mul, add).
at::Tensor CfgCombine(const at::Tensor& v_uncond, const at::Tensor& v_cond, double scale);

// The same on a model output batched [uncond; cond] along dim 0 (batch 2B -> B).
at::Tensor CfgCombineBatched(const at::Tensor& v_batched, double scale);

// One Euler step with per-frame timesteps: diffusers' per-token branch, as LTXFlowEuler,
// ChunkFlowEuler and SelfForcingFlowEulerCamCtrl call it. For every frame f of batch b:
//   sigma      = t[b, f] / 1000                                  (float32)
//   sigma_next = max { s in schedule.sigmas : s < sigma - 1e-6 }, or 0 if none
//   x[b, :, f] += (sigma_next - sigma) * v[b, :, f]
// Frames whose sigma_next == sigma (t = 0: the condition frame, finished teacher chunks) are
// returned bit-identical even if v is not finite there.
// `frame_timesteps`: (B, 1, T) as fed to the model, (B, T), or (T) shared by the batch.
// Throws InvalidInputError on shape mismatches.
at::Tensor PerFrameEulerStep(const at::Tensor& x, const at::Tensor& v,
                             const at::Tensor& frame_timesteps, const SigmaSchedule& schedule);

// ---------------------------------------------------------------------------------------------
// Frame counts and chunk plans.

// A half-open range [begin, end) of latent frames.
struct FrameRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t frame) const { return frame >= begin && frame < end; }
  bool operator==(const FrameRange& o) const { return begin == o.begin && end == o.end; }
  bool operator!=(const FrameRange& o) const { return !(*this == o); }
};

// F = stride*k + 1 pixel frames -> k + 1 latent frames (F = 1 -> 1). Throws InvalidInputError
// otherwise, e.g. "LatentFramesForPixelFrames: 50 pixel frames is not 8k+1 (1, 9, 17, 25, ...)".
int64_t LatentFramesForPixelFrames(int64_t pixel_frames,
                                   int64_t temporal_stride = kVaeTemporalStride);
// The inverse: stride * (T - 1) + 1. Throws InvalidInputError for T < 1.
int64_t PixelFramesForLatentFrames(int64_t latent_frames,
                                   int64_t temporal_stride = kVaeTemporalStride);

// `create_autoregressive_segments` with base `chunk_frames` for T = chunk_frames*k + 1 latent
// frames: [0, chunk_frames + 1), then chunk_frames frames each: k chunks (121 -> 40 chunks).
// (The reference lets the first chunk absorb any remainder; the released streaming model is
// trained with a 4-frame first chunk only, so other counts are rejected.) Throws
// InvalidInputError naming the count, the valid latent and pixel counts, e.g.
//   "StreamingChunkPlan: 50 latent frames is not 3k+1 with k >= 1 (4, 7, 10, ...): the first
//    chunk holds the condition frame + 3 generated frames and every later chunk 3 frames;
//    pixel frames must be 24k+1 (25, 49, 73, ...)".
std::vector<FrameRange> StreamingChunkPlan(int64_t num_latent_frames,
                                           int64_t chunk_frames = kStreamingChunkFrames);

// ---------------------------------------------------------------------------------------------
// Per-frame timesteps.

// The model's per-frame timestep input (B, 1, frames.size()), float32, for one forward over
// latent frames `frames`: every frame gets `timestep` (rounded to float32), except the
// condition frames (global latent indices, spec: frame 0) inside `frames`, which get 0. Use
//  * bidirectional:  FrameTimesteps(B, {0, T}, t)
//  * streaming:      FrameTimesteps(B, chunk, t)  (frame 0 is 0 only in chunk 0)
//  * KV-save pass:   FrameTimesteps(B, chunk, 0.0)
// Throws InvalidInputError for batch < 1, an empty/negative range, or a negative/non-finite
// timestep.
at::Tensor FrameTimesteps(int64_t batch, FrameRange frames, double timestep,
                          const std::vector<int64_t>& condition_frames = {0},
                          c10::Device device = c10::Device(c10::kCPU));

// ---------------------------------------------------------------------------------------------
// Chunk-causal teacher (§4.2): staggered per-chunk schedules.

struct ChunkCausalTeacherTable {
  std::vector<int64_t> chunk_start_steps;  // floor(i * interval_k * steps)
  int64_t total_steps = 0;                 // chunk_start_steps.back() + steps
  // timesteps[chunk][global_step]: -1 before the chunk starts (not in the forward), the
  // schedule's timestep while it runs, 0 once finished (clean context).
  std::vector<std::vector<float>> timesteps;
  // Chunks in the forward at `global_step` (t >= 0): always a prefix 0..n-1; returns n.
  int64_t ActiveChunks(int64_t global_step) const;
};

// Builds the table for `num_chunks` chunks of `schedule`. interval_k > 0 (the spec's default is
// 1 / num_chunks, the overload without it). Throws InvalidInputError for bad arguments.
ChunkCausalTeacherTable ChunkCausalTeacherSchedule(const SigmaSchedule& schedule,
                                                   int64_t num_chunks, double interval_k);
ChunkCausalTeacherTable ChunkCausalTeacherSchedule(const SigmaSchedule& schedule,
                                                   int64_t num_chunks);

// ---------------------------------------------------------------------------------------------
// Streaming softmax KV window (§4.3, `_accumulate_softmax_kv_cache`).
//
// GDN blocks need no window (their state is the whole history). Softmax blocks attend to the
// concatenated post-RoPE K/V of the cached chunks plus the current chunk. With sink: chunk 0
// (the 4-frame sink) + the most recent num_cached_blocks - 1 chunks; without: the most recent
// num_cached_blocks chunks; num_cached_blocks <= 0 keeps every previous chunk.
struct KvWindowRule {
  int64_t num_cached_blocks = kStreamingNumCachedBlocks;
  bool sink = kStreamingSinkChunk;
};

// Chunk indices whose K/V are cached while chunk `chunk` (>= 0) is denoised, in cache order
// (sink first, then ascending). Empty for chunk 0.
std::vector<int64_t> CachedChunksFor(int64_t chunk, const KvWindowRule& rule = {});

// The latent frames (global indices, cache order) of CachedChunksFor(chunk) over `plan`.
std::vector<int64_t> CachedFramesFor(const std::vector<FrameRange>& plan, int64_t chunk,
                                     const KvWindowRule& rule = {});

// For every chunk i of `plan`: the latent frames that stay in the softmax cache after chunk
// i's KV-save pass (what chunk i + 1 attends to besides itself; for the last chunk, what a
// following chunk would). Frames not listed may be evicted after chunk i. Entry i equals
// CachedFramesFor(plan, i + 1, rule) evaluated with chunk i + 1's index.
std::vector<std::vector<int64_t>> CachedFramesAfterEachChunk(const std::vector<FrameRange>& plan,
                                                             const KvWindowRule& rule = {});

// max over chunks of (cached frames + the chunk's own frames): the softmax key window in
// latent frames (x tokens per frame for keys). 10 for the released rule on any 3k+1 plan with
// k >= 3.
int64_t MaxKeyWindowFrames(const std::vector<FrameRange>& plan, const KvWindowRule& rule = {});

}  // namespace wmserve::worker::sana

#endif  // WMSERVE_WORKER_MODELS_SANA_SAMPLER_H_
