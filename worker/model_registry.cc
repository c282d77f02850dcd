#include "worker/model_registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/models/testcard_model.h"
#include "worker/models/warp_model.h"

namespace wmserve::worker {

std::vector<std::string> AvailableModels() { return {"warp", "testcard"}; }

absl::StatusOr<std::unique_ptr<Model>> CreateModel(const ModelConfig& config) {
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
