// File: ltx2_refiner_bench — timings of the LTX-2.0 refiner port (worker/models/ltx2/refiner.h)
// at a preset's true shapes, with seeded dummy weights.
//
// LibTorch + the standard library only (builds in the model-only build, -DWMSERVE_MODEL_ONLY=ON).
//
//   ltx2_refiner_bench [--preset tiny|ltx2] [--config FILE] [--device cpu|cuda:N]
//                      [--dtype fp32|bf16] [--latent-h 22] [--latent-w 40] [--frames 13]
//                      [--text-len 1024] [--iters N] [--warmup N] [--threads N]
//                      [--what all|stream|offline]
//
// Rows:
//   * refiner.stream_block — one streaming block (3 Euler forwards + 1 capture forward, spec §3.3)
//     of 3 frames with the history full (kv_max_frames - 1 = 10 frames): 2,640 queries x 12,320
//     keys at 22x40. The runner first captures the sink and refines blocks until the history is
//     full (these double as warm-up); every timed call refines the next block.
//   * refiner.offline_step — one forward of the offline mode (spec §3.2) over --frames frames
//     (sink + current, sink/current attention pattern).
// Each row: median / min / max ms per call (host wall clock around a device synchronisation), the
// model FLOPs per call and the achieved TFLOP/s, and the peak memory over the timed calls (CUDA:
// the caching allocator's peak allocated bytes; CPU: the process's peak RSS). The streaming row
// also reports the runner's history and state bytes.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#if WMSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
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
#include "worker/models/ltx2/refiner_config.h"

namespace wmserve::worker::ltx2 {
namespace {

using bench::DeviceDescription;
using bench::Median;
using bench::PeakMemory;
using bench::ResetPeakMemory;
using bench::Sync;

struct Options {
  std::string preset = "tiny";
  std::string config_file;
  std::string device = "cpu";
  std::string dtype = "fp32";
  int64_t latent_h = 22, latent_w = 40;  // 704x1280 / 32
  int64_t frames = 13;                   // offline row: sink + 12 current frames
  int64_t text_len = 1024;               // connector output length (spec §2.7)
  int iters = 0;                         // 0: 10 on CUDA, 3 on the CPU
  int warmup = 1;
  int threads = 0;
  std::string what = "all";
};

[[noreturn]] void Usage(const std::string& error) {
  std::cerr << "ltx2_refiner_bench: " << error << "\n"
            << "usage: ltx2_refiner_bench [--preset tiny|ltx2] [--config FILE]\n"
            << "         [--device cpu|cuda:N] [--dtype fp32|bf16] [--latent-h H] [--latent-w W]\n"
            << "         [--frames T] [--text-len L] [--iters N] [--warmup N] [--threads N]\n"
            << "         [--what all|stream|offline]\n";
  std::exit(2);
}

int64_t PositiveInt(const std::string& flag, const std::string& value) {
  try {
    size_t used = 0;
    const long long v = std::stoll(value, &used);
    if (used == value.size() && v > 0) return v;
  } catch (const std::exception&) {
  }
  Usage(flag + ": expected a positive integer, got '" + value + "'");
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") Usage("help");
    if (i + 1 >= argc) Usage(flag + " needs a value");
    const std::string value = argv[++i];
    if (flag == "--preset") {
      o.preset = value;
    } else if (flag == "--config") {
      o.config_file = value;
    } else if (flag == "--device") {
      o.device = value;
    } else if (flag == "--dtype") {
      o.dtype = value;
    } else if (flag == "--latent-h") {
      o.latent_h = PositiveInt(flag, value);
    } else if (flag == "--latent-w") {
      o.latent_w = PositiveInt(flag, value);
    } else if (flag == "--frames") {
      o.frames = PositiveInt(flag, value);
    } else if (flag == "--text-len") {
      o.text_len = PositiveInt(flag, value);
    } else if (flag == "--iters") {
      o.iters = static_cast<int>(PositiveInt(flag, value));
    } else if (flag == "--warmup") {
      o.warmup = value == "0" ? 0 : static_cast<int>(PositiveInt(flag, value));
    } else if (flag == "--threads") {
      o.threads = static_cast<int>(PositiveInt(flag, value));
    } else if (flag == "--what") {
      if (value != "all" && value != "stream" && value != "offline") Usage("--what: " + value);
      o.what = value;
    } else {
      Usage("unknown flag " + flag);
    }
  }
  if (o.frames < 2) Usage("--frames: the offline row needs a sink and at least one frame");
  return o;
}

// Model FLOPs (2 x MACs) of one forward with n_q queries, n_k self-attention keys per query and
// a text of length l (spec §2.10): projections, FFN, self- and cross-attention products; the text
// K/V are cached per prompt and not counted.
double ForwardFlops(const TransformerConfig& c, double n_q, double n_k, double l) {
  const double d = static_cast<double>(c.inner_dim()), f = static_cast<double>(c.ffn_dim());
  const double per_token_per_layer = 2.0 * (4.0 * d * d + 2.0 * d * d + 2.0 * d * f);
  const double attention_per_layer = 4.0 * n_q * n_k * d + 4.0 * n_q * l * d;
  const double io = 2.0 * n_q * d * (c.in_channels + c.out_channels);
  return c.num_layers * (n_q * per_token_per_layer + attention_per_layer) + io;
}

struct Row {
  std::string name, shape;
  std::vector<double> ms;
  double flops = 0;
  int64_t peak = 0;
  std::string extra;
};

double MiB(int64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0); }

std::string Fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

// Times `iters` calls of `call` (after `warmup` untimed ones) and records the peak memory.
void Time(const c10::Device& device, int warmup, int iters, const std::function<void()>& call,
          Row* row) {
  for (int i = 0; i < warmup; ++i) call();
  Sync(device);
  (void)ResetPeakMemory(device);
  for (int i = 0; i < iters; ++i) {
    Sync(device);
    const auto t0 = std::chrono::steady_clock::now();
    call();
    Sync(device);
    const auto t1 = std::chrono::steady_clock::now();
    row->ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  row->peak = PeakMemory(device);
}

int Run(const Options& o) {
  const TransformerConfig config = o.config_file.empty()
                                       ? TransformerConfig::Preset(o.preset)
                                       : TransformerConfig::FromFile(o.config_file);
  c10::ScalarType dtype;
  if (o.dtype == "fp32") {
    dtype = c10::kFloat;
  } else if (o.dtype == "bf16") {
    dtype = c10::kBFloat16;
  } else {
    Usage("--dtype: expected fp32 or bf16, got '" + o.dtype + "'");
  }
  const c10::Device device = bench::ResolveDevice(o.device);
  if (o.threads > 0) at::set_num_threads(o.threads);
  const int iters = o.iters > 0 ? o.iters : (device.is_cuda() ? 10 : 3);

  c10::InferenceMode inference;
  std::cout << "ltx2_refiner_bench: torch " << TORCH_VERSION << ", device "
            << DeviceDescription(device) << ", dtype " << o.dtype << ", cpu threads "
            << at::get_num_threads() << "\n";
  const auto load_start = std::chrono::steady_clock::now();
  auto model = std::make_shared<Ltx2Transformer>(config);
  model->InitDummyWeights(/*seed=*/20260611, dtype, device);
  Sync(device);
  std::cout << "preset " << config.name << ": " << config.num_layers << " layers, "
            << config.num_attention_heads << " x " << config.attention_head_dim << ", "
            << model->ParameterCount() << " parameters (" << Fixed(MiB(model->WeightBytes()), 1)
            << " MiB), dummy weights in "
            << Fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start)
                         .count(),
                     1)
            << " s\n";

  const RefinerOptions refiner;  // canonical: 3 steps, block 3, sink 1, kv_max_frames 11, fps 16
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t h = o.latent_h, w = o.latent_w, per_frame = h * w;
  at::manual_seed(20260612);
  const at::Tensor text_embeddings = at::randn({1, o.text_len, config.caption_channels}, f32);
  const Ltx2TextContext text = model->PrepareText(text_embeddings, at::ones({1, o.text_len}, f32));
  std::cout << "text context: " << o.text_len << " tokens, " << Fixed(MiB(text.bytes()), 1)
            << " MiB (projected text + every layer's cross-attention K/V)\n";

  std::vector<Row> rows;
  if (o.what == "all" || o.what == "stream") {
    Row row;
    row.name = "refiner.stream_block";
    RefinerChunkRunner runner(model, text, refiner);
    runner.CaptureSink(at::randn({1, config.in_channels, 1, h, w}, f32));
    const at::Tensor block = at::randn({1, config.in_channels, refiner.block_size, h, w}, f32);
    // Fill the history (these blocks are the warm-up).
    int warm = 0;
    while (runner.history_frames() < refiner.history_cap_frames() || warm < o.warmup) {
      runner.RefineBlock(block);
      ++warm;
    }
    const int64_t n_q = refiner.block_size * per_frame;
    const int64_t n_k = (refiner.sink_size + runner.history_frames()) * per_frame + n_q;
    Time(device, 0, iters, [&] { runner.RefineBlock(block); }, &row);
    row.shape = "3+1 fwd, " + std::to_string(n_q) + " q x " + std::to_string(n_k) + " k";
    row.flops = 4 * ForwardFlops(config, n_q, n_k, o.text_len);
    row.extra = "history " + std::to_string(runner.history_frames()) + " frames = " +
                Fixed(MiB(runner.HistoryBytes()), 1) + " MiB, runner state " +
                Fixed(MiB(runner.StateBytes()), 1) + " MiB";
    rows.push_back(row);
  }
  if (o.what == "all" || o.what == "offline") {
    Row row;
    row.name = "refiner.offline_step";
    const int64_t n = o.frames * per_frame;
    const at::Tensor tokens = at::randn({1, n, config.in_channels}, f32);
    at::Tensor values = at::zeros({1, 2}, f32);
    values.select(1, 1).fill_(909.375);
    const Ltx2Timesteps timesteps = Ltx2Timesteps::Grouped(values, {per_frame, n - per_frame});
    const Ltx2RopeTable rope = model->Rope(FrameRange(0, o.frames), h, w, refiner.fps);
    Ltx2ForwardOptions forward;
    forward.pattern = AttentionPattern::kSinkCurrent;
    forward.n_context_tokens = per_frame;
    Time(device, o.warmup, iters, [&] { model->Forward(tokens, timesteps, rope, text, forward); },
         &row);
    row.shape = "1 fwd, " + std::to_string(o.frames) + " frames = " + std::to_string(n) + " tokens";
    // Sink queries see the sink only; the others see everything.
    row.flops = ForwardFlops(config, n - per_frame, n, o.text_len) +
                ForwardFlops(config, per_frame, per_frame, o.text_len);
    rows.push_back(row);
  }

  std::cout << std::left << std::setw(22) << "row" << std::setw(34) << "shape" << std::right
            << std::setw(11) << "median ms" << std::setw(10) << "min ms" << std::setw(10)
            << "max ms" << std::setw(11) << "GFLOP" << std::setw(10) << "TFLOP/s" << std::setw(12)
            << "peak MiB"
            << "\n";
  for (const Row& r : rows) {
    const double median = Median(r.ms);
    std::cout << std::left << std::setw(22) << r.name << std::setw(34) << r.shape << std::right
              << std::setw(11) << Fixed(median, 2) << std::setw(10)
              << Fixed(*std::min_element(r.ms.begin(), r.ms.end()), 2) << std::setw(10)
              << Fixed(*std::max_element(r.ms.begin(), r.ms.end()), 2) << std::setw(11)
              << Fixed(r.flops / 1e9, 1) << std::setw(10)
              << Fixed(r.flops / 1e12 / (median / 1e3), 2) << std::setw(12)
              << Fixed(MiB(r.peak), 1) << "\n";
    if (!r.extra.empty()) std::cout << "  " << r.extra << "\n";
  }
  std::cout << "iters " << iters << "; peak MiB: "
            << (device.is_cuda() ? "CUDA caching-allocator peak allocated bytes"
                                 : "process peak RSS (VmHWM)")
            << " over the timed calls\n";
  return 0;
}

}  // namespace
}  // namespace wmserve::worker::ltx2

int main(int argc, char** argv) {
  try {
    return wmserve::worker::ltx2::Run(wmserve::worker::ltx2::ParseOptions(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "ltx2_refiner_bench: " << e.what() << "\n";
    return 1;
  }
}
