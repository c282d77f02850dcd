// Builds models by name. The only place that knows which models exist.
#ifndef WMSERVE_WORKER_MODEL_REGISTRY_H_
#define WMSERVE_WORKER_MODEL_REGISTRY_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model.h"

namespace wmserve::worker {

struct ModelConfig {
  std::string name = "warp";
  std::string device = "cpu";  // "cpu" | "cuda:N"
  std::string preset;          // model-specific; "" = default
  std::string weights;         // model-specific; "" = none / default
  std::string dtype;           // model-specific; "" = default
  int frames_per_chunk = 16;   // for models with a free chunk size (warp)
  std::string mode;               // default rollout mode (sana-wm: streaming | bidirectional)
  std::string prompt_embeddings;  // prompt-embedding safetensors (sana-wm); "" = built-in only
  // sana-wm's LTX-2 VAE / refiner weights ("" = the model's default: dummy) and refiner prompts.
  std::string vae_weights;
  std::string refiner_weights;
  std::string refiner_prompt_embeddings;
  // Co-batching (sana-wm streaming): rollouts per batched forward (1 = off), and how long a
  // rollout ready for its next chunk waits for the others (a fraction of the last batch's run
  // time, at most max ms). See worker/models/sana/batcher.h.
  int max_batch = 4;
  double batch_gather_fraction = 0.25;
  int batch_gather_max_ms = 50;
  // Observes every co-batched chunk: rollouts in it and its run time (metrics); may be empty.
  std::function<void(int batch_size, double seconds)> on_batch;
};

// NOT_FOUND for an unknown name (listing the known ones); the model's own errors otherwise.
absl::StatusOr<std::unique_ptr<Model>> CreateModel(const ModelConfig& config);
std::vector<std::string> AvailableModels();

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODEL_REGISTRY_H_
