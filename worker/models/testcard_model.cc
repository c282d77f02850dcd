#include "worker/models/testcard_model.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace wmserve::worker {
namespace {

constexpr uint8_t kBars[8][3] = {{235, 235, 235}, {235, 235, 16}, {16, 235, 235}, {16, 235, 16},
                                 {235, 16, 235},  {235, 16, 16},  {16, 16, 235},  {16, 16, 16}};

class TestcardRollout : public ModelRollout {
 public:
  TestcardRollout(int width, int height, int frames, int per_chunk)
      : width_(width), height_(height), frames_(frames), per_chunk_(per_chunk) {}

  absl::StatusOr<std::optional<FrameChunk>> NextChunk(RolloutControl& control) override {
    if (next_ >= frames_) return std::nullopt;
    const absl::Time start = absl::Now();
    FrameChunk chunk;
    chunk.first_frame = next_;
    chunk.frame_count = std::min(per_chunk_, frames_ - next_);
    chunk.width = width_;
    chunk.height = height_;
    const size_t frame_bytes = static_cast<size_t>(width_) * height_ * 3;
    chunk.rgb.resize(frame_bytes * chunk.frame_count);
    for (int f = 0; f < chunk.frame_count; ++f) {
      if (control.cancelled()) return absl::CancelledError("rollout cancelled");
      Render(next_ + f, chunk.rgb.data() + f * frame_bytes);
      control.OnStep(ModelStage::kBackbone, next_ + f, frames_);
    }
    next_ += chunk.frame_count;
    control.AddStageTime(ModelStage::kBackbone, absl::Now() - start);
    return chunk;
  }

 private:
  void Render(int frame, uint8_t* out) const {
    const int bar_w = std::max(1, width_ / 8);
    const int moving = frame % std::max(1, width_);
    for (int y = 0; y < height_; ++y) {
      uint8_t* row = out + static_cast<size_t>(y) * width_ * 3;
      for (int x = 0; x < width_; ++x) {
        const uint8_t* c = kBars[std::min(7, x / bar_w)];
        std::memcpy(row + x * 3, c, 3);
      }
      row[moving * 3] = row[moving * 3 + 1] = row[moving * 3 + 2] = 128;
    }
    // Frame number as 16 binary blocks along the bottom edge.
    const int block = std::max(1, width_ / 16);
    for (int bit = 0; bit < 16; ++bit) {
      const uint8_t v = (frame >> bit) & 1 ? 255 : 0;
      for (int y = height_ - std::min(height_, block); y < height_; ++y) {
        for (int x = bit * block; x < std::min(width_, (bit + 1) * block); ++x) {
          uint8_t* p = out + (static_cast<size_t>(y) * width_ + x) * 3;
          p[0] = p[1] = p[2] = v;
        }
      }
    }
  }

  const int width_, height_, frames_, per_chunk_;
  int next_ = 0;
};

class TestcardModel : public Model {
 public:
  explicit TestcardModel(const TestcardConfig& config) : config_(config) {
    descriptor_.name = "testcard";
  }
  const ModelDescriptor& descriptor() const override { return descriptor_; }
  absl::Status WarmUp() override { return absl::OkStatus(); }
  absl::StatusOr<std::unique_ptr<ModelRollout>> StartRollout(const RolloutSpec& spec,
                                                             RolloutControl& control) override {
    if (!spec.options.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("model testcard takes no model_options (got ",
                                                     spec.options.begin()->first, ")"));
    }
    control.AddStageTime(ModelStage::kImageEncode, absl::ZeroDuration());
    return std::make_unique<TestcardRollout>(spec.width, spec.height,
                                             static_cast<int>(spec.cameras.size()),
                                             std::max(1, config_.frames_per_chunk));
  }

 private:
  const TestcardConfig config_;
  ModelDescriptor descriptor_;
};

}  // namespace

std::unique_ptr<Model> CreateTestcardModel(const TestcardConfig& config) {
  return std::make_unique<TestcardModel>(config);
}

}  // namespace wmserve::worker
