// anoclip-abuse: a hostile client for scripts/abuse.sh. Mixes well-formed Detect traffic with
// every request that once hurt the server (see SECURITY.md), for a bounded time, against a
// loopback server, and reports what happened:
//   sent, bad requests refused (with an expected status), good requests answered, requests lost
//   (a good request not answered OK, or a bad one answered with a status that says the server
//   failed: INTERNAL, UNKNOWN, UNAVAILABLE, DATA_LOSS), and the server's peak RSS against its
//   RSS when the run began (read from /proc/PID).
// Exit 0 when nothing was lost and the server process is the one that started.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <functional>
#include <limits>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "anoclip/v1/anoclip.grpc.pb.h"
#include "client/samples.h"
#include "common/arguments.h"

namespace {

using namespace std::string_literals;
using anoclip::v1::AnomalyDetectionService;
using anoclip::v1::DetectRequest;
using anoclip::v1::DetectResponse;

struct Counters {
  std::atomic<int64_t> sent{0}, good_ok{0}, bad_refused{0}, lost{0};
};

int64_t ReadStatusKb(int pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      int64_t kb = 0;
      std::string digits;
      for (char c : line) {
        if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
      }
      return absl::SimpleAtoi(digits, &kb) ? kb : -1;
    }
  }
  return -1;
}

bool ServerFailed(grpc::StatusCode code) {
  return code == grpc::INTERNAL || code == grpc::UNKNOWN || code == grpc::UNAVAILABLE || code == grpc::DATA_LOSS;
}

std::string Png(const cv::Mat& rgb) {
  std::vector<uchar> bytes;
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  cv::imencode(".png", bgr, bytes);
  return std::string(bytes.begin(), bytes.end());
}

// A TIFF whose IFD names the size twice: 12000x12000 first (what libtiff uses), then 16x16.
std::string RepeatedSizeTiff() {
  std::string t = "II*\0\x08\0\0\0"s;
  auto u16 = [&t](uint16_t v) { t += static_cast<char>(v & 0xff), t += static_cast<char>(v >> 8); };
  auto u32 = [&t](uint32_t v) {
    for (int i = 0; i < 4; ++i) t += static_cast<char>((v >> (8 * i)) & 0xff);
  };
  auto entry = [&](uint16_t tag, uint16_t type, uint32_t count, uint32_t value) {
    u16(tag), u16(type), u32(count), u32(value);
  };
  u16(8);
  entry(256, 4, 1, 12000), entry(257, 4, 1, 12000), entry(256, 4, 1, 16), entry(257, 4, 1, 16);
  entry(258, 3, 1, 8), entry(262, 3, 1, 1), entry(273, 4, 1, 200), entry(279, 4, 1, 16);
  u32(0);
  t.resize(260, '\0');
  return t;
}

// Each hostile request and the codes that count as "refused" for it.
struct Hostile {
  std::string name;
  std::function<DetectRequest(std::mt19937_64&)> make;
};

std::vector<Hostile> HostileRequests(const std::string& good_png, const std::string& class_name) {
  auto base = [good_png, class_name] {
    DetectRequest r;
    r.set_image_bytes(good_png);
    r.mutable_class_spec()->set_name(class_name);
    return r;
  };
  std::vector<Hostile> list;
  list.push_back({"tta lr 1e38", [base](std::mt19937_64&) {
                    auto r = base();
                    r.mutable_options()->set_tta(true);
                    r.mutable_options()->mutable_tta_options()->set_lr(1e38f);
                    return r;
                  }});
  list.push_back({"NaN threshold", [base](std::mt19937_64&) {
                    auto r = base();
                    r.mutable_options()->set_threshold(std::numeric_limits<float>::quiet_NaN());
                    return r;
                  }});
  list.push_back({"unknown enums", [base](std::mt19937_64& rng) {
                    auto r = base();
                    r.mutable_options()->set_heatmap_format(static_cast<anoclip::v1::HeatmapFormat>(4 + rng() % 100));
                    return r;
                  }});
  list.push_back({"TIFF size repeated", [base](std::mt19937_64&) {
                    auto r = base();
                    r.set_image_bytes(RepeatedSizeTiff());
                    return r;
                  }});
  list.push_back({"64x64 custom spec", [base](std::mt19937_64&) {
                    auto r = base();
                    auto* spec = r.mutable_class_spec();
                    for (int i = 0; i < 64; ++i) {
                      spec->add_domains(absl::StrCat("photo ", i));
                      spec->add_normal_states(absl::StrCat("good ", i, " {}"));
                      spec->add_abnormal_states(absl::StrCat("bad ", i, " {}"));
                    }
                    return r;
                  }});
  list.push_back({"control characters", [base](std::mt19937_64&) {
                    auto r = base();
                    r.mutable_class_spec()->set_name("bot\x1etle");
                    return r;
                  }});
  list.push_back({"made-up class", [base](std::mt19937_64& rng) {
                    auto r = base();
                    r.mutable_class_spec()->set_name(absl::StrCat("part-", rng() % 1000000));
                    return r;
                  }});
  list.push_back({"truncated PNG", [base, good_png](std::mt19937_64& rng) {
                    auto r = base();
                    r.set_image_bytes(good_png.substr(0, 1 + rng() % (good_png.size() - 1)));
                    return r;
                  }});
  list.push_back({"random bytes", [base](std::mt19937_64& rng) {
                    auto r = base();
                    std::string bytes(1 + rng() % 4096, '\0');
                    for (auto& b : bytes) b = static_cast<char>(rng());
                    r.set_image_bytes(bytes);
                    return r;
                  }});
  list.push_back({"random fields", [](std::mt19937_64& rng) {
                    // Random wire bytes parsed as a request: any field, any value.
                    std::string wire(1 + rng() % 512, '\0');
                    for (auto& b : wire) b = static_cast<char>(rng());
                    DetectRequest r;
                    (void)r.ParsePartialFromString(wire);
                    return r;
                  }});
  return list;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> words(argv + 1, argv + argc);
  auto args = anoclip::Arguments::Parse(
      words, {"target", "pid", "seconds", "good-workers", "bad-workers", "class", "unread-streams"}, {});
  if (!args.ok() || !args->Has("target") || !args->Has("pid")) {
    std::cerr << "usage: anoclip-abuse --target 127.0.0.1:PORT --pid SERVER_PID [--seconds 300] [--good-workers 2]\n"
                 "  [--bad-workers 2] [--unread-streams 4] [--class bottle]\n";
    return 2;
  }
  const std::string target = args->String("target");
  if (target.rfind("127.", 0) != 0 && target.rfind("localhost:", 0) != 0) {
    std::cerr << "anoclip-abuse: targets loopback only\n";
    return 2;
  }
  int64_t pid = 0, seconds = 300, good_workers = 2, bad_workers = 2, unread_streams = 4;
  (void)absl::SimpleAtoi(args->String("pid"), &pid);
  (void)absl::SimpleAtoi(args->String("seconds", "300"), &seconds);
  (void)absl::SimpleAtoi(args->String("good-workers", "2"), &good_workers);
  (void)absl::SimpleAtoi(args->String("bad-workers", "2"), &bad_workers);
  (void)absl::SimpleAtoi(args->String("unread-streams", "4"), &unread_streams);
  seconds = std::clamp<int64_t>(seconds, 1, 3600);
  const std::string class_name = args->String("class", "bottle");

  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = AnomalyDetectionService::NewStub(channel);
  const auto samples = anoclip::client::GenerateSamples(240);
  const std::string good_png = Png(samples.front().rgb);
  const auto hostile = HostileRequests(good_png, class_name);

  const int64_t idle_kb = ReadStatusKb(static_cast<int>(pid), "VmRSS");
  Counters counters;
  std::vector<int64_t> refused_by_kind(hostile.size(), 0);
  std::mutex kinds_mutex;
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  auto call = [&](const DetectRequest& request, int deadline_s) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_s));
    DetectResponse response;
    ++counters.sent;
    return stub->Detect(&context, request, &response);
  };

  std::vector<std::thread> threads;
  for (int w = 0; w < good_workers; ++w) {
    threads.emplace_back([&] {
      DetectRequest good;
      good.set_image_bytes(good_png);
      good.mutable_class_spec()->set_name(class_name);
      while (std::chrono::steady_clock::now() < end) {
        auto status = call(good, 60);
        if (status.ok()) {
          ++counters.good_ok;
        } else {
          ++counters.lost;
          std::cerr << "good request failed: " << status.error_code() << " " << status.error_message() << "\n";
        }
      }
    });
  }
  for (int w = 0; w < bad_workers; ++w) {
    threads.emplace_back([&, w] {
      std::mt19937_64 rng(1234 + w);
      size_t next = w;
      while (std::chrono::steady_clock::now() < end) {
        const size_t kind = next++ % hostile.size();
        auto status = call(hostile[kind].make(rng), 60);
        if (status.ok()) {
          // Random fields can make a valid request; that is not a failure of the server.
          continue;
        }
        if (ServerFailed(status.error_code())) {
          ++counters.lost;
          std::cerr << hostile[kind].name << ": " << status.error_code() << " " << status.error_message() << "\n";
        } else {
          ++counters.bad_refused;
          std::lock_guard<std::mutex> lock(kinds_mutex);
          ++refused_by_kind[kind];
        }
      }
    });
  }
  // Streams that send and never read: the server must stop reading them, not buffer them.
  for (int s = 0; s < unread_streams; ++s) {
    threads.emplace_back([&] {
      grpc::ClientContext context;
      context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds + 5));
      auto stream = stub->Inspect(&context);
      anoclip::v1::InspectRequest request;
      request.mutable_detect()->set_image_bytes(good_png);
      request.mutable_detect()->mutable_class_spec()->set_name(class_name);
      request.mutable_detect()->mutable_options()->set_heatmap_format(anoclip::v1::HEATMAP_FORMAT_FLOAT32);
      while (std::chrono::steady_clock::now() < end) {
        std::atomic<bool> written{false};
        std::thread timer([&] {
          // A blocked write is the point; cancel it when the run ends.
          while (!written && std::chrono::steady_clock::now() < end) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
          if (!written) context.TryCancel();
        });
        const bool ok = stream->Write(request);
        written = true;
        timer.join();
        if (!ok) break;
        ++counters.sent;
      }
      context.TryCancel();
    });
  }
  int64_t peak_kb = idle_kb;
  while (std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    peak_kb = std::max(peak_kb, ReadStatusKb(static_cast<int>(pid), "VmRSS"));
  }
  for (auto& t : threads) t.join();
  const bool alive = ::kill(static_cast<pid_t>(pid), 0) == 0;

  std::cout << "abuse run: " << seconds << " s against " << target << " (server pid " << pid << ")\n"
            << "  requests sent        " << counters.sent << "\n"
            << "  bad requests refused " << counters.bad_refused << "\n"
            << "  good requests ok     " << counters.good_ok << "\n"
            << "  requests lost        " << counters.lost << "\n"
            << "  server restarts      " << (alive ? 0 : 1) << " (the same process " << (alive ? "is" : "is NOT")
            << " alive)\n"
            << "  RSS MiB              at start " << idle_kb / 1024 << ", peak " << peak_kb / 1024 << " ("
            << (idle_kb > 0 ? static_cast<double>(peak_kb) / idle_kb : 0) << "x)\n"
            << "  refused by kind:\n";
  for (size_t i = 0; i < hostile.size(); ++i) {
    std::cout << "    " << hostile[i].name << ": " << refused_by_kind[i] << "\n";
  }
  return counters.lost == 0 && alive && counters.good_ok > 0 ? 0 : 1;
}
