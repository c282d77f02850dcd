// `sana-wm`: the SANA-WM pipeline behind the Model interface.
//
//   image -> LTX-2 VAE encoder (latent frame 0) -> Stage-1 DiT (worker/models/sana/) ->
//   LTX-2 refiner (worker/models/ltx2/refiner.h) -> causal LTX-2 VAE decode -> uint8 frames
//
// Stage-1 modes (rollout.h): "streaming" (default: the distilled chunk-causal model, 4 Euler
// steps + 1 KV-save forward per chunk of 3 latent frames, no CFG, co-batched across rollouts;
// 24k+1 frames) and "bidirectional" (60-step flow-matching Euler with CFG over the whole clip;
// 8k+1 frames; nothing is emitted until every step is done, then the clip is refined offline in
// one sequence and decoded chunk by chunk).
//
// Refiner (on by default when loaded): streaming rollouts refine block by block (3 Euler steps +
// a capture forward per chunk, 11-frame K/V window with the sink), overlapped with Stage-1: chunk
// N is refined and decoded on its own thread (CUDA stream) while chunk N+1 is generated
// (worker/models/pipeline/streaming_pipeline.h). The conditioning frame is the refiner's sink and
// is dropped from the output: 961 poses -> 960 frames. With refine=off every frame is kept.
// preview=on also streams the un-refined Stage-1 video (decoded with its own VAE cache) as
// PREVIEW chunks ahead of each refined FINAL chunk.
//
// Not ported (documented stand-ins): the text encoders. Prompts are precomputed embeddings
// (L x caption_channels; Stage-1 300 x 2304, refiner x 3840 at true scale) from safetensors files
// (`prompt_embeddings`, `refiner_prompt_embeddings`), selected per request by the "prompt" option;
// without them built-in placeholders (N(0, 1) from fixed seeds: deterministic, meaningless). The
// unconditional (CFG) Stage-1 embedding is all zeros unless the file has an entry "uncond".
//
// Request model_options: "mode" (streaming | bidirectional; default from the config), "steps"
// (bidirectional only, default 60), "cfg" (bidirectional only, default 5), "prompt",
// "refine" (on | off), "preview" (on | off, needs refine). Output size must be the native size
// (0x0 = native): 704x1280 at true scale, 64x128 for the tiny preset.
//
// Chunks: one FINAL chunk per Stage-1 chunk (24 frames; chunk 0 has 25 without the refiner).
#ifndef WMSERVE_WORKER_MODELS_SANA_WM_MODEL_H_
#define WMSERVE_WORKER_MODELS_SANA_WM_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "worker/model.h"

namespace wmserve::worker {

struct SanaWmConfig {
  std::string device = "cpu";     // "cpu" or "cuda:N"
  std::string preset = "tiny";    // "tiny" | "sana-wm-2.6b"
  // "dummy" (seeded random weights, worker/models/sana/dummy_weights.h) or a path to a
  // safetensors file with the official parameter names.
  std::string weights = "dummy";
  std::string dtype = "fp32";     // "fp32" | "bf16"
  std::string mode = "streaming";  // default rollout mode: "streaming" | "bidirectional"
  // Optional safetensors file of prompt embeddings: entries NAME of shape (L, Ccap) (or
  // (1, L, Ccap)), optional NAME.mask (L) with 1 = keep, 0 = pad; "uncond" is the CFG embedding.
  std::string prompt_embeddings;
  uint64_t dummy_seed = 0;        // seed of the dummy weights (Stage-1, VAE and refiner)
  // LTX-2 VAE and refiner weights (worker/models/ltx2/), at the preset's scale (tiny -> the tiny
  // configs, sana-wm-2.6b -> LTX-2.0): "dummy" (seeded random) or a safetensors path with the
  // official names; refiner_weights "none" runs without the refiner (refine=off only).
  std::string vae_weights = "dummy";
  std::string refiner_weights = "dummy";
  // Optional prompt embeddings for the refiner, the same format with caption_channels features
  // (3840 at true scale: the Gemma-3 connector output; the text encoder is not ported). Without
  // it a built-in placeholder; the request's "prompt" option names both embeddings.
  std::string refiner_prompt_embeddings;
  // Co-batching of streaming rollouts (worker/models/sana/batcher.h): at most max_batch
  // rollouts per batched forward (1 = off); a rollout ready for its next chunk waits up to
  // batch_gather_fraction of the last batch's run time (at most batch_gather_max_ms) for the
  // others. Batched chunks equal solo chunks up to float rounding (~1e-6 relative), so a
  // rollout's bits depend slightly on its batch-mates; set max_batch 1 for bit-reproducibility.
  int max_batch = 4;
  double batch_gather_fraction = 0.25;
  int batch_gather_max_ms = 50;
  std::function<void(int batch_size, double seconds)> on_batch;  // may be empty
};

// The model's descriptor (native size, weights and per-rollout bytes) without loading anything.
// INVALID_ARGUMENT for a bad preset / dtype / mode / device string.
absl::StatusOr<ModelDescriptor> DescribeSanaWm(const SanaWmConfig& config);

// Loads the model. INVALID_ARGUMENT for a bad config or a weights / prompt file that does not
// match the preset, UNAVAILABLE if the device is not present, RESOURCE_EXHAUSTED when the
// weights do not fit.
absl::StatusOr<std::unique_ptr<Model>> CreateSanaWmModel(const SanaWmConfig& config);

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_SANA_WM_MODEL_H_
