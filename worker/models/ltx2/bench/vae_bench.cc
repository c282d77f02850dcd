// File: ltx2_vae_bench — timings of the LTX-2.0 VAE port at a preset (dummy weights).
//
// LibTorch + the standard library only (builds in the model-only build, -DWMSERVE_MODEL_ONLY=ON).
//
//   ltx2_vae_bench [--preset tiny|ltx2] [--device cpu|cuda[:N]] [--dtype fp32|bf16|fp16]
//                  [--height H] [--width W] [--iters N] [--warmup N] [--threads N]
//
// Rows (B = 1, pixel size H x W, default the preset's 704x1280, latent H/32 x W/32):
//   vae.encode_image           one image (1, 3, 1, H, W) -> normalised z (the conditioning image)
//   vae.decode_chunk_first     Reset + 1 latent frame -> 1 pixel frame (a stream's first call)
//   vae.decode_chunk           3 latent frames -> 24 pixel frames (one 1.5 s chunk at 16 fps),
//                              steady state: the stream's cache is warm and keeps being updated
//   vae.decode_chunk_per_frame the same chunk decoded one latent frame per pass
//                              (CausalStreamingDecoder::Options::max_latent_frames_per_pass = 1)
// Each row: `warmup` untimed calls, then `iters` timed calls, each bracketed by a device
// synchronisation (host wall clock). Reported: median / min / max ms per call, and the peak
// memory over the timed calls: on CUDA the caching allocator's peak allocated bytes (reset after
// warm-up) and that peak minus what was allocated before (the call's transient memory); on CPU
// the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) and its growth. The
// streaming rows also print the decoder cache's bytes.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/randn.h>
#include <c10/core/GradMode.h>
#include <torch/cuda.h>
#include <torch/version.h>

#if WMSERVE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
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
#include "worker/models/ltx2/vae.h"
#include "worker/models/ltx2/vae_config.h"

namespace wmserve::worker::ltx2 {
namespace {

using bench::DeviceDescription;
using bench::ParseDtype;
using bench::ParseInt;
using bench::PeakMemory;
using bench::ResetPeakMemory;
using bench::Sync;

struct Options {
  std::string preset = "tiny";
  std::string device = "cpu";
  std::string dtype = "fp32";
  int height = 0;  // 0: the preset's pixel size
  int width = 0;
  int iters = 5;
  int warmup = 1;
  int threads = 0;  // 0: LibTorch's default
};

const char kUsage[] =
    "usage: ltx2_vae_bench [--preset tiny|ltx2] [--device cpu|cuda[:N]] [--dtype fp32|bf16|fp16]\n"
    "                      [--height H] [--width W] [--iters N] [--warmup N] [--threads N]\n";

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    const size_t eq = arg.find('=');
    const bool has_inline = arg.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_inline) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto next = [&]() -> std::string {
      if (has_inline) return value;
      if (i + 1 >= argc) throw std::invalid_argument(arg + ": missing value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--preset") {
      o.preset = next();
    } else if (arg == "--device") {
      o.device = next();
    } else if (arg == "--dtype") {
      o.dtype = next();
    } else if (arg == "--height") {
      o.height = ParseInt(arg, next(), 1);
    } else if (arg == "--width") {
      o.width = ParseInt(arg, next(), 1);
    } else if (arg == "--iters") {
      o.iters = ParseInt(arg, next(), 1);
    } else if (arg == "--warmup") {
      o.warmup = ParseInt(arg, next(), 0);
    } else if (arg == "--threads") {
      o.threads = ParseInt(arg, next(), 1);
    } else {
      throw std::invalid_argument("unknown argument '" + arg + "'");
    }
  }
  return o;
}

std::string MiB(int64_t bytes) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(1) << static_cast<double>(bytes) / (1024.0 * 1024.0)
    << " MiB";
  return s.str();
}

struct Row {
  std::string name;
  std::string shape;
  std::function<void()> setup;           // untimed, before the warm-up (may be empty)
  std::function<void()> call;            // timed
  std::function<int64_t()> cache_bytes;  // streaming rows; may be empty
};

void RunRow(const Options& o, const c10::Device& device, const Row& row) {
  if (row.setup) row.setup();
  for (int i = 0; i < o.warmup; ++i) {
    row.call();
    Sync(device);
  }
  const int64_t baseline = ResetPeakMemory(device);
  std::vector<double> ms;
  for (int i = 0; i < o.iters; ++i) {
    Sync(device);
    const auto start = std::chrono::steady_clock::now();
    row.call();
    Sync(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  const int64_t peak = PeakMemory(device);
  std::sort(ms.begin(), ms.end());
  std::cout << std::left << std::setw(28) << row.name << std::setw(40) << row.shape << std::right
            << std::fixed << std::setprecision(2) << " median " << std::setw(9) << ms[ms.size() / 2]
            << " ms  min " << std::setw(9) << ms.front() << "  max " << std::setw(9) << ms.back()
            << "  peak " << MiB(peak) << " (+" << MiB(peak - baseline) << ")";
  if (row.cache_bytes) std::cout << "  cache " << MiB(row.cache_bytes());
  std::cout << "\n";
}

int Main(int argc, char** argv) {
  const Options o = ParseOptions(argc, argv);
  if (o.threads > 0) at::set_num_threads(o.threads);
  const c10::Device device = bench::ResolveDevice(o.device);
  const c10::ScalarType dtype = ParseDtype(o.dtype);
  const VaeConfig config = VaeConfig::Preset(o.preset);
  const int64_t height = o.height > 0 ? o.height : config.pixel_height;
  const int64_t width = o.width > 0 ? o.width : config.pixel_width;
  const int64_t lh = config.LatentSize(height), lw = config.LatentSize(width);
  c10::NoGradGuard no_grad;

  std::cout << "ltx2_vae_bench: preset " << config.name << ", " << DeviceDescription(device) << ", "
            << o.dtype << ", " << height << "x" << width << " pixels (latent " << lh << "x" << lw
            << "), LibTorch " << TORCH_VERSION << ", threads " << at::get_num_threads()
            << ", iters " << o.iters << " (+" << o.warmup << " warm-up)";
  if (device.is_cuda()) {
    std::cout << ", cuDNN TF32 " << (at::globalContext().allowTF32CuDNN() ? "on" : "off");
  }
  std::cout << "\n";
  std::cout << "parameters: encoder " << VideoVae::EncoderParameterCount(config) << ", decoder "
            << VideoVae::DecoderParameterCount(config) << "; streaming cache "
            << VideoVae::StreamingCacheElements(config, 1, lh, lw) << " elements ("
            << MiB(VideoVae::StreamingCacheElements(config, 1, lh, lw) *
                   static_cast<int64_t>(c10::elementSize(dtype)))
            << ")\n";

  auto vae = std::make_shared<VideoVae>(config, dtype, device);
  vae->InitDummyWeights(20260601);
  const auto options = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t l = config.latent_channels;

  const at::Tensor image =
      at::randn({1, config.in_channels, 1, height, width}, options).clamp_(-1, 1);
  const at::Tensor first_latent = at::randn({1, l, 1, lh, lw}, options);
  const at::Tensor chunk = at::randn({1, l, 3, lh, lw}, options);

  auto decoder = std::make_shared<CausalStreamingDecoder>(vae);
  CausalStreamingDecoder::Options per_frame;
  per_frame.max_latent_frames_per_pass = 1;
  auto decoder_per_frame = std::make_shared<CausalStreamingDecoder>(vae, per_frame);
  const std::string chunk_shape = "z [1," + std::to_string(l) + ",3," + std::to_string(lh) + "," +
                                  std::to_string(lw) + "] -> 24 frames";

  const std::vector<Row> rows = {
      {"vae.encode_image",
       "[1," + std::to_string(config.in_channels) + ",1," + std::to_string(height) + "," +
           std::to_string(width) + "] -> z",
       nullptr, [&] { (void)vae->Encode(image); }, nullptr},
      {"vae.decode_chunk_first",
       "z [1," + std::to_string(l) + ",1," + std::to_string(lh) + "," + std::to_string(lw) +
           "] -> 1 frame",
       nullptr,
       [&] {
         decoder->Reset();
         (void)decoder->DecodeChunk(first_latent);
       },
       [&] { return decoder->CacheBytes(); }},
      {"vae.decode_chunk", chunk_shape,
       [&] {
         decoder->Reset();
         (void)decoder->DecodeChunk(first_latent);
       },
       [&] { (void)decoder->DecodeChunk(chunk); }, [&] { return decoder->CacheBytes(); }},
      {"vae.decode_chunk_per_frame", chunk_shape,
       [&] { (void)decoder_per_frame->DecodeChunk(first_latent); },
       [&] { (void)decoder_per_frame->DecodeChunk(chunk); },
       [&] { return decoder_per_frame->CacheBytes(); }},
  };
  for (const Row& row : rows) RunRow(o, device, row);
  return 0;
}

}  // namespace
}  // namespace wmserve::worker::ltx2

int main(int argc, char** argv) {
  try {
    return wmserve::worker::ltx2::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "ltx2_vae_bench: " << e.what() << "\n";
    return 1;
  }
}
