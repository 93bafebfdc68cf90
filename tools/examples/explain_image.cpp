// Minimal embedding example: Grad-CAM for one image with the camrt library, printing the top class and where
// the map peaks. Build against an installed camrt with find_package(camrt) (see tools/examples/CMakeLists.txt).
//   explain_image MODEL.json IMAGE
#include "engine/camrt.h"  // installed under PREFIX/include/camrt

#include <algorithm>
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL.json IMAGE\n", argv[0]);
    return 2;
  }
  try {
    camrt::ExplainOptions options;
    options.methods = {"gradcam"};
    camrt::Session session(argv[1], /*batch=*/1, options);
    const camrt::Explanation& ex = session.explain_images({argv[2]});
    const camrt::HostTensor& map = ex.results[0].maps;  // (1, 1, H, W), read in place
    const int64_t H = map.shape[2], W = map.shape[3];
    const float* m = map.f32();
    const int64_t peak = std::max_element(m, m + H * W) - m;
    std::printf("camrt %s: class %lld, Grad-CAM peak at (x=%lld, y=%lld) of %lldx%lld\n", camrt::version(),
                static_cast<long long>(ex.classes[0][0]), static_cast<long long>(peak % W),
                static_cast<long long>(peak / W), static_cast<long long>(W), static_cast<long long>(H));
    return 0;
  } catch (const camrt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
