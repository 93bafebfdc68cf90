// Attribute accessors shared by every op: they turn a malformed attribute into an error naming the node.
#include "engine/ops/op.h"

namespace camrt {

bool Op::has_attr(const std::string& key) const { return node_.attrs.contains(key); }

int64_t Op::attr_int(const std::string& key, int64_t fallback) const {
  if (!has_attr(key)) return fallback;
  const auto& v = node_.attrs.at(key);
  CAMRT_CHECK(v.is_number_integer() || v.is_boolean(),
              "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be an integer");
  return v.is_boolean() ? int64_t(v.get<bool>()) : v.get<int64_t>();
}

float Op::attr_float(const std::string& key, float fallback) const {
  if (!has_attr(key)) return fallback;
  const auto& v = node_.attrs.at(key);
  CAMRT_CHECK(v.is_number(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a number");
  return v.get<float>();
}

std::string Op::attr_string(const std::string& key, const std::string& fallback) const {
  if (!has_attr(key)) return fallback;
  const auto& v = node_.attrs.at(key);
  CAMRT_CHECK(v.is_string(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a string");
  return v.get<std::string>();
}

std::vector<int64_t> Op::attr_ints(const std::string& key, const std::vector<int64_t>& fallback) const {
  if (!has_attr(key)) return fallback;
  const auto& v = node_.attrs.at(key);
  CAMRT_CHECK(v.is_array(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a list of integers");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    CAMRT_CHECK(e.is_number_integer(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a list of integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::vector<float> Op::attr_floats(const std::string& key, const std::vector<float>& fallback) const {
  if (!has_attr(key)) return fallback;
  const auto& v = node_.attrs.at(key);
  CAMRT_CHECK(v.is_array(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a list of numbers");
  std::vector<float> out;
  for (const auto& e : v) {
    CAMRT_CHECK(e.is_number(), "node '" << node_.name << "' (" << node_.op << "): attribute '" << key << "' must be a list of numbers");
    out.push_back(e.get<float>());
  }
  return out;
}

void Op::expect_inputs(const std::vector<TensorDesc>& inputs, size_t min_count, size_t max_count) const {
  CAMRT_CHECK(inputs.size() >= min_count && inputs.size() <= max_count,
              "node '" << node_.name << "' (" << node_.op << "): expected " << min_count
                       << (min_count == max_count ? "" : " to " + std::to_string(max_count)) << " inputs, got "
                       << inputs.size());
}

int64_t Op::normalize_axis(int64_t axis, int64_t rank) const {
  CAMRT_CHECK(axis >= -rank && axis < rank,
              "node '" << node_.name << "' (" << node_.op << "): axis " << axis << " out of range for rank " << rank);
  return axis < 0 ? axis + rank : axis;
}

}  // namespace camrt
