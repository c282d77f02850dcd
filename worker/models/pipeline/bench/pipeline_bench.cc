// pipeline_bench: the whole SANA-WM streaming pipeline of one rollout at a preset's true shapes,
// with dummy weights: Stage-1 (sana/), the LTX-2 refiner and the causal LTX-2 VAE decode
// (ltx2/), all resident on one device, driven by StreamingPipeline exactly as the worker drives
// it (worker/models/pipeline/streaming_pipeline.h).
//
// It reports, for one rollout of --chunks chunks (40 = 961 pixel frames = 60 s at 16 fps):
//   * the weights resident on the device (Stage-1 + VAE + refiner);
//   * per-chunk time of each stage (Stage-1 chunk, refiner block, VAE decode of one chunk to
//     uint8 frames on the host), from a run with the stages inline (no overlap), steady state
//     (chunks >= 2: full windows and caches);
//   * the wall time per chunk of the same rollout with the stages overlapped (producer thread +
//     post thread, separate CUDA streams), i.e. what a client sees in steady state, and the
//     realtime factor (1.5 s of video per chunk);
//   * peak device memory (CUDA allocator; process RSS on the CPU) while producing the chunk that
//     ends the first 10 s (chunk 6) and the last chunk, and the rollout's state bytes: memory must
//     not grow with rollout length.
//
//   pipeline_bench [--preset tiny|full] [--device cpu|cuda:N] [--dtype fp32|bf16] [--chunks N]
//                  [--threads N] [--no-refine] [--mode both|inline|overlap]
#include <ATen/Context.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#if WMSERVE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "worker/models/bench_support.h"
#include "worker/models/ltx2/ltx2_transformer.h"
#include "worker/models/ltx2/refiner.h"
#include "worker/models/ltx2/vae.h"
#include "worker/models/pipeline/streaming_pipeline.h"
#include "worker/models/sana/dummy_weights.h"
#include "worker/models/sana/rollout.h"
#include "worker/models/sana/sana_config.h"

namespace wmserve::worker::pipeline {
namespace {

using bench::CurrentMemory;
using bench::Median;
using bench::PeakMemory;
using bench::ProcStatusBytes;
using bench::ResetPeakMemory;
using bench::ResolveDevice;
using bench::Sync;

using Clock = std::chrono::steady_clock;

struct Options {
  std::string preset = "tiny";
  std::string device = "cpu";
  std::string dtype = "fp32";
  int chunks = 40;
  int threads = 0;
  bool refine = true;
  std::string mode = "both";
};

const char kUsage[] =
    "usage: pipeline_bench [--preset tiny|full] [--device cpu|cuda:N] [--dtype fp32|bf16]\n"
    "                      [--chunks N] [--threads N] [--no-refine] [--mode both|inline|overlap]\n";

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--preset") {
      o.preset = value();
    } else if (a == "--device") {
      o.device = value();
    } else if (a == "--dtype") {
      o.dtype = value();
    } else if (a == "--chunks") {
      o.chunks = std::stoi(value());
    } else if (a == "--threads") {
      o.threads = std::stoi(value());
    } else if (a == "--no-refine") {
      o.refine = false;
    } else if (a == "--mode") {
      o.mode = value();
    } else {
      throw std::invalid_argument("unknown flag " + a);
    }
  }
  if (o.preset != "tiny" && o.preset != "full") throw std::invalid_argument("--preset tiny|full");
  if (o.dtype != "fp32" && o.dtype != "bf16") throw std::invalid_argument("--dtype fp32|bf16");
  if (o.chunks < 8) throw std::invalid_argument("--chunks must be >= 8 (chunk 6 is measured)");
  if (o.mode != "both" && o.mode != "inline" && o.mode != "overlap") {
    throw std::invalid_argument("--mode both|inline|overlap");
  }
  return o;
}

double GiB(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

struct Models {
  sana::SanaConfig stage1_config;
  std::unique_ptr<sana::SanaTransformer> stage1;
  std::shared_ptr<const ltx2::VideoVae> vae;
  std::shared_ptr<const ltx2::Ltx2Transformer> refiner;
  ltx2::Ltx2TextContext refiner_text;
};

// Stage-1 inputs for `latent` frames at the preset's latent grid: a static camera (identity
// poses, the model's intrinsics), random Plücker rays and text. Costs do not depend on values.
sana::RolloutInputs StageOneInputs(const sana::SanaConfig& c, int64_t latent, c10::Device device) {
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t h = c.latent_height(), w = c.latent_width();
  sana::RolloutInputs in;
  in.first_latent = at::randn({1, c.in_channels, 1, h, w}, f32);
  at::Tensor camera = at::zeros({1, latent, 20}, f32);
  for (int i = 0; i < 4; ++i) camera.select(2, i * 5).fill_(1.0);
  camera.narrow(2, 16, 2).fill_(static_cast<double>(w));
  camera.narrow(2, 18, 1).fill_(w / 2.0);
  camera.narrow(2, 19, 1).fill_(h / 2.0);
  in.camera_conditions = camera;
  in.chunk_plucker = at::randn({1, c.chunk_plucker_channels, latent, h, w}, f32);
  in.text = at::randn({1, 1, c.model_max_length, c.caption_channels}, f32);
  in.text_mask = at::ones({1, c.model_max_length}, at::TensorOptions().dtype(at::kLong).device(device));
  in.seed = 1;
  return in;
}

struct RunResult {
  std::vector<double> chunk_wall_s;  // per FINAL output, from the previous one (first: from start)
  std::vector<double> stage1_s, refiner_s, decode_s;  // per chunk
  int64_t peak_10s = 0, peak_last = 0;
  int64_t state_10s = 0, state_last = 0;  // pipeline state + Stage-1 cache
  int64_t frames = 0;
};

RunResult RunRollout(const Models& m, const Options& o, c10::Device device, bool overlap) {
  const int64_t latent = 1 + static_cast<int64_t>(m.stage1_config.chunk_size) * o.chunks;
  auto rollout = std::make_shared<sana::StreamingRollout>(
      *m.stage1, StageOneInputs(m.stage1_config, latent, device));
  RunResult r;
  PipelineModels models;
  models.vae = m.vae;
  models.refiner = m.refiner;
  models.refiner_text = m.refiner_text;
  PipelineOptions options;
  options.refine = o.refine;
  options.overlap = overlap;
  PipelineCallbacks callbacks;
  callbacks.on_stage_time = [&r](Stage stage, double seconds) {
    (stage == Stage::kRefiner ? r.refiner_s : r.decode_s).push_back(seconds);
  };
  LatentSource source = [rollout, &r, device]() -> std::optional<LatentChunk> {
    if (rollout->done()) return std::nullopt;
    const auto start = Clock::now();
    at::Tensor latents = rollout->NextChunk(nullptr);
    Sync(device);
    r.stage1_s.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    return LatentChunk{std::move(latents), {}};
  };
  StreamingPipeline pipeline(models, source, options, callbacks);
  int chunk = 0;
  auto last = Clock::now();
  (void)ResetPeakMemory(device);
  for (;;) {
    std::optional<PipelineOutput> out = pipeline.Next();
    if (!out) break;
    if (out->kind != OutputKind::kFinal) continue;
    const auto now = Clock::now();
    r.chunk_wall_s.push_back(std::chrono::duration<double>(now - last).count());
    last = now;
    r.frames += out->frames.size(0);
    // Chunk 6 ends the first 10 s (1 + 24 * 7 = 169 frames > 160).
    if (chunk == 6 || chunk == o.chunks - 1) {
      const int64_t peak = PeakMemory(device);
      const int64_t state = pipeline.StateBytes() + rollout->cache_bytes();
      (chunk == 6 ? r.peak_10s : r.peak_last) = peak;
      (chunk == 6 ? r.state_10s : r.state_last) = state;
    }
    ++chunk;
    (void)ResetPeakMemory(device);
  }
  return r;
}

std::string Ms(double seconds) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << seconds * 1e3;
  return s.str();
}

// Steady state: chunks >= 2 (chunk 0 has 4 latent frames and no history; chunk 1 a partial
// window). Stage lists may hold one entry per chunk per stage.
std::vector<double> Steady(const std::vector<double>& v) {
  return v.size() > 2 ? std::vector<double>(v.begin() + 2, v.end()) : v;
}

int Run(const Options& o) {
  const c10::Device device = ResolveDevice(o.device);
  if (o.threads > 0) at::set_num_threads(o.threads);
  const c10::ScalarType dtype = o.dtype == "bf16" ? c10::kBFloat16 : c10::kFloat;
  const std::string sana_preset = o.preset == "tiny" ? "tiny" : "sana-wm-2.6b";
  const std::string ltx2_preset = o.preset == "tiny" ? "tiny" : "ltx2";
  c10::InferenceMode inference;

  Models m;
  m.stage1_config = sana::SanaConfig::Preset(sana_preset);
  const int64_t before = CurrentMemory(device);
  m.stage1 = sana::InitDummyWeights(m.stage1_config, 1, dtype, device);
  auto vae = std::make_shared<ltx2::VideoVae>(ltx2::VaeConfig::Preset(ltx2_preset), dtype, device);
  vae->InitDummyWeights(1);
  m.vae = vae;
  if (o.refine) {
    auto refiner =
        std::make_shared<ltx2::Ltx2Transformer>(ltx2::TransformerConfig::Preset(ltx2_preset));
    refiner->InitDummyWeights(1, dtype, device);
    const int64_t tokens = o.preset == "tiny" ? 16 : 1024;
    const int64_t channels = refiner->config().caption_channels;
    m.refiner_text = refiner->PrepareText(
        at::randn({1, tokens, channels}, at::TensorOptions().dtype(at::kFloat).device(device)));
    m.refiner = refiner;
  }
  Sync(device);
  const int64_t resident = CurrentMemory(device) - before;

  const sana::SanaConfig& c = m.stage1_config;
  std::cout << "pipeline_bench: torch " << TORCH_VERSION << ", device " << device << ", dtype "
            << o.dtype << ", cpu threads " << at::get_num_threads() << "\n"
            << "preset " << o.preset << ": Stage-1 " << sana_preset << ", VAE + refiner "
            << ltx2_preset << (o.refine ? "" : " (refiner off)") << ", " << c.pixel_height << "x"
            << c.pixel_width << " px, latent " << c.latent_height() << "x" << c.latent_width()
            << "; rollout of " << o.chunks << " chunks (" << 1 + 24 * o.chunks
            << " pixel frames in)\n"
            << "weights resident: " << std::fixed << std::setprecision(2) << GiB(resident)
            << " GiB (" << (device.is_cuda() ? "cuda allocator" : "rss") << ")\n\n";

  auto report = [&](const char* name, const RunResult& r) {
    const double wall = Median(Steady(r.chunk_wall_s));
    std::cout << name << ": " << r.frames << " frames out, " << r.chunk_wall_s.size()
              << " chunks; steady per chunk: Stage-1 " << Ms(Median(Steady(r.stage1_s)))
              << " ms, refiner " << (o.refine ? Ms(Median(Steady(r.refiner_s))) : "-")
              << " ms, decode " << Ms(Median(Steady(r.decode_s))) << " ms; wall "
              << Ms(wall) << " ms/chunk = " << std::setprecision(3) << 1.5 / wall
              << "x realtime; first chunk after " << Ms(r.chunk_wall_s.front()) << " ms\n"
              << "  peak memory during chunk 6 (10 s): " << std::setprecision(2)
              << GiB(r.peak_10s) << " GiB, during chunk " << o.chunks - 1 << " ("
              << o.chunks * 1.5 << " s): " << GiB(r.peak_last) << " GiB; rollout state "
              << std::setprecision(1) << GiB(r.state_10s) * 1024 << " -> "
              << GiB(r.state_last) * 1024 << " MiB\n";
  };
  if (o.mode != "overlap") report("inline (stages one after another)", RunRollout(m, o, device, false));
  if (o.mode != "inline") report("overlapped (producer + post threads)", RunRollout(m, o, device, true));
  return 0;
}

}  // namespace
}  // namespace wmserve::worker::pipeline

int main(int argc, char** argv) {
  try {
    return wmserve::worker::pipeline::Run(wmserve::worker::pipeline::Parse(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::cerr << "pipeline_bench: " << e.what() << "\n" << wmserve::worker::pipeline::kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "pipeline_bench: " << e.what() << "\n";
    return 1;
  }
}
