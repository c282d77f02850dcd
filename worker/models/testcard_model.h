// `testcard`: an instant model for pipeline checks and benchmarks.
//
// Renders a deterministic test card (colour bars, a bar that moves one column per frame and the
// frame number in binary blocks) with no learned parts and negligible compute, so the rest of
// the path — queueing, dispatch, encoding, relay — can be measured and verified on its own.
// Ignores the image content and camera (it still requires a valid request). Torch-free.
#ifndef WMSERVE_WORKER_MODELS_TESTCARD_MODEL_H_
#define WMSERVE_WORKER_MODELS_TESTCARD_MODEL_H_

#include <memory>

#include "worker/model.h"

namespace wmserve::worker {

struct TestcardConfig {
  int frames_per_chunk = 16;
};

std::unique_ptr<Model> CreateTestcardModel(const TestcardConfig& config);

}  // namespace wmserve::worker

#endif  // WMSERVE_WORKER_MODELS_TESTCARD_MODEL_H_
