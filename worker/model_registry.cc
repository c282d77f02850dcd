#include "worker/model_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/models/sana_wm_model.h"
#include "worker/models/testcard_model.h"
#include "worker/models/warp_model.h"

namespace wmserve::worker {

std::vector<std::string> AvailableModels() { return {"warp", "testcard", "sana-wm"}; }

absl::StatusOr<std::unique_ptr<Model>> CreateModel(const ModelConfig& config) {
  if (config.name != "sana-wm" && (!config.mode.empty() || !config.prompt_embeddings.empty())) {
    return absl::InvalidArgumentError(absl::StrCat("model ", config.name,
                                                   " takes no --mode or --prompt-embeddings"));
  }
  if (config.name == "warp") {
    if (!config.preset.empty() || !config.weights.empty() || !config.dtype.empty()) {
      return absl::InvalidArgumentError(
          "model warp takes no --preset, --weights or --dtype (it has no weights)");
    }
    WarpModelConfig warp;
    warp.device = config.device;
    warp.frames_per_chunk = config.frames_per_chunk;
    return CreateWarpModel(warp);
  }
  if (config.name == "sana-wm") {
    SanaWmConfig sana;  // its defaults: preset tiny, dummy weights, fp32, streaming
    sana.device = config.device;
    if (!config.preset.empty()) sana.preset = config.preset;
    if (!config.weights.empty()) sana.weights = config.weights;
    if (!config.dtype.empty()) sana.dtype = config.dtype;
    if (!config.mode.empty()) sana.mode = config.mode;
    sana.prompt_embeddings = config.prompt_embeddings;
    if (!config.vae_weights.empty()) sana.vae_weights = config.vae_weights;
    if (!config.refiner_weights.empty()) sana.refiner_weights = config.refiner_weights;
    sana.refiner_prompt_embeddings = config.refiner_prompt_embeddings;
    sana.max_batch = config.max_batch;
    sana.batch_gather_fraction = config.batch_gather_fraction;
    sana.batch_gather_max_ms = config.batch_gather_max_ms;
    sana.on_batch = config.on_batch;
    return CreateSanaWmModel(sana);
  }
  if (config.name == "testcard") {
    TestcardConfig testcard;
    testcard.frames_per_chunk = config.frames_per_chunk;
    return CreateTestcardModel(testcard);
  }
  return absl::NotFoundError(absl::StrCat("unknown model \"", config.name,
                                          "\" (available: ", absl::StrJoin(AvailableModels(), ", "),
                                          ")"));
}

}  // namespace wmserve::worker
