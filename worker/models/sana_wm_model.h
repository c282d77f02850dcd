// `sana-wm`: the SANA-WM Stage-1 world model (worker/models/sana/) behind the Model interface.
//
// Serves the LibTorch port of the Stage-1 DiT with its two samplers (worker/models/sana/
// rollout.h): "streaming" (default: the distilled chunk-causal model, 4 Euler steps + 1 KV-save
// forward per chunk of 3 latent frames, no CFG; 24k+1 frames) and "bidirectional" (60-step
// flow-matching Euler with CFG over the whole clip; 8k+1 frames; nothing is emitted until every
// step is done).
//
// What is NOT the real model yet (each a documented stand-in until its own issue lands):
//   * Image encoder: no LTX-2 VAE. Latent frame 0 is the first image resized + centre-cropped to
//     the native size (camera.h PlanResizeCenterCrop geometry), average-pooled by the VAE's
//     spatial stride to the latent grid, and mapped RGB -> latent channels with the
//     pseudo-inverse of the preview projection below, so preview(encode(image)) is a blurred
//     image.
//   * Decoder: a latent preview, not the VAE decode. A fixed linear latent -> RGB projection (a
//     3 x C matrix, N(0, 1/C) from a fixed seed, the same for every worker), bilinear upsampling
//     by the VAE's spatial stride, and the VAE's causal temporal layout: latent frame 0 -> pixel
//     frame 0, latent frame k >= 1 -> pixel frames 8(k-1)+1 .. 8k, linearly interpolated from
//     latent frame k-1 to k (pixel frame 8k is exactly latent frame k).
//   * Text encoder: not ported. Prompts are precomputed embeddings (L x caption_channels; 300 x
//     2304 at 2.6B) from a safetensors file (`prompt_embeddings`), selected per request by the
//     "prompt" option; without it, a built-in placeholder embedding (N(0, 1) from a fixed seed:
//     deterministic, meaningless). The unconditional (CFG) embedding is all zeros with every
//     token kept, unless the file has an entry named "uncond".
//
// Request model_options: "mode" (streaming | bidirectional; default from the config), "steps"
// (bidirectional only, default 60), "cfg" (bidirectional only, default 5), "prompt" (an entry of
// the prompt-embeddings file, or "default"). Output size must be the native size (0x0 = native).
//
// Chunks: streaming emits one FrameChunk per rollout chunk (chunk 0: 1 + 24 = 25 pixel frames,
// later ones 24). Bidirectional emits the same layout (25, then 24 each, the last one shorter)
// after all steps.
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
  uint64_t dummy_seed = 0;        // seed of the dummy weights
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
