#include "Description.hh"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace caloforge {
namespace {

// Reads the file as a list of non-empty token lines, keeping the line numbers for messages.
class Lines {
 public:
  explicit Lines(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read description file " + path);
    std::string line;
    for (int no = 1; std::getline(in, line); ++no) {
      std::istringstream ss(line);
      std::vector<std::string> tokens;
      for (std::string t; ss >> t;) tokens.push_back(t);
      if (!tokens.empty()) fLines.push_back({no, std::move(tokens)});
    }
  }
  // The next line; its first token must be `key`, and it must have `nTokens` tokens (-1: any).
  const std::vector<std::string>& Next(const std::string& key, int nTokens) {
    if (fPos >= fLines.size()) throw std::runtime_error("description ends early: expected '" + key + "'");
    const auto& [no, tokens] = fLines[fPos++];
    fNo = no;
    if (tokens[0] != key) Fail("expected '" + key + "', got '" + tokens[0] + "'");
    if (nTokens >= 0 && int(tokens.size()) != nTokens)
      Fail("'" + key + "' needs " + std::to_string(nTokens - 1) + " values, got " + std::to_string(tokens.size() - 1));
    return tokens;
  }
  bool AtEnd() const { return fPos >= fLines.size(); }
  [[noreturn]] void Fail(const std::string& what) const {
    throw std::runtime_error("description line " + std::to_string(fNo) + ": " + what);
  }
  double Number(const std::string& s) const {
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end || errno == ERANGE || !std::isfinite(v)) Fail("not a number: '" + s + "'");
    return v;
  }
  double Positive(const std::string& s) const {
    const double v = Number(s);
    if (!(v > 0)) Fail("must be > 0: '" + s + "'");
    return v;
  }
  int Count(const std::string& s, int lo, int hi) const {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end || errno == ERANGE || v < lo || v > hi)
      Fail("'" + s + "' is not an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return int(v);
  }

 private:
  std::vector<std::pair<int, std::vector<std::string>>> fLines;
  std::size_t fPos = 0;
  int fNo = 0;
};

SlabSpec ReadSlab(Lines& in) {
  const auto& t = in.Next("slab", 4);
  if (t[3] != "0" && t[3] != "1") in.Fail("active flag must be 0 or 1, got '" + t[3] + "'");
  return {t[1], in.Positive(t[2]), t[3] == "1"};
}

}  // namespace

Description ReadDescription(const std::string& path) {
  Lines in(path);
  Description d;
  const auto& head = in.Next("caloforge-geant4", 2);
  if (head[1] != "1") in.Fail("unsupported description version " + head[1] + " (this program reads 1)");
  d.name = in.Next("name", 2)[1];
  const std::string frame = in.Next("frame", 2)[1];
  if (frame != "detector" && frame != "particle") in.Fail("frame must be detector or particle, got '" + frame + "'");
  d.particleFrame = frame == "particle";
  d.halfWidth = in.Positive(in.Next("half_width", 2)[1]);
  d.cut = in.Positive(in.Next("cut", 2)[1]);
  const int nUp = in.Count(in.Next("upstream", 2)[1], 0, 1 << 20);
  for (int i = 0; i < nUp; ++i) d.upstream.push_back(ReadSlab(in));
  const int nLayers = in.Count(in.Next("layers", 2)[1], 1, 1 << 20);
  const double tol = 1e-6;  // mm, as geometry.py's thickness check
  for (int i = 0; i < nLayers; ++i) {
    const auto t = in.Next("layer", -1);  // copy: Next() invalidates on the following call
    if (t.size() < 6) in.Fail("'layer' needs at least 5 values");
    LayerSpec L;
    L.zFront = in.Number(t[1]);
    L.thickness = in.Number(t[2]);
    // a zero-thickness placeholder layer (no material: "layer <z> 0.0 0 0 ...") keeps the layer
    // numbering of the Python geometry; it holds no slabs and collects no energy
    const bool placeholder = L.thickness == 0;
    if (L.thickness < 0) in.Fail("layer thickness must be >= 0: '" + t[2] + "'");
    L.repeats = in.Count(t[3], placeholder ? 0 : 1, placeholder ? 0 : 1 << 20);
    const int nSlabs = in.Count(t[4], placeholder ? 0 : 1, placeholder ? 0 : kMaxSlabsPerCell);
    const std::string& kind = t[5];
    std::size_t expected = 6;
    if (kind == "polar") {
      if (t.size() < 8) in.Fail("'polar' needs n_r n_alpha and the r edges");
      L.readout = Readout::Polar;
      L.nR = in.Count(t[6], 0, 1 << 20);
      L.nAlpha = in.Count(t[7], 1, 1 << 20);
      // n_r = 0 means no cells; its single edge (if written) is ignored
      const std::size_t nEdges = L.nR ? L.nR + 1 : t.size() - 8;
      if (nEdges > 1 && !L.nR) in.Fail("polar readout with n_r = 0 takes at most one edge");
      expected = 8 + nEdges;
      if (t.size() != expected) in.Fail("polar readout needs n_r + 1 = " + std::to_string(nEdges) + " r edges");
      for (std::size_t k = 0; k < nEdges && L.nR; ++k) {
        const double r = in.Number(t[8 + k]);
        if (r < 0 || (k && r <= L.rEdges.back())) in.Fail("r edges must be >= 0 and increase strictly");
        L.rEdges.push_back(r);
      }
      L.nVoxels = std::size_t(L.nR) * L.nAlpha;
    } else if (kind == "cartesian") {
      expected = 10;
      if (t.size() != expected) in.Fail("'cartesian' needs nx ny cell_x cell_y");
      L.readout = Readout::Cartesian;
      L.nx = in.Count(t[6], 1, 1 << 20);
      L.ny = in.Count(t[7], 1, 1 << 20);
      L.cellX = in.Positive(t[8]);
      L.cellY = in.Positive(t[9]);
      L.nVoxels = std::size_t(L.nx) * L.ny;
    } else if (kind != "none") {
      in.Fail("readout must be none, polar or cartesian, got '" + kind + "'");
    }
    if (t.size() != expected) in.Fail("too many values on the layer line");
    double cell = 0;
    for (int s = 0; s < nSlabs; ++s) {
      L.slabs.push_back(ReadSlab(in));
      cell += L.slabs.back().thickness;
    }
    if (std::fabs(cell * L.repeats - L.thickness) > tol + 1e-12 * L.thickness)
      in.Fail("layer " + std::to_string(i) + ": repeats x slab thicknesses = " + std::to_string(cell * L.repeats) +
              " mm, not the layer thickness " + std::to_string(L.thickness) + " mm");
    if (i && L.zFront < d.layers.back().zFront + d.layers.back().thickness - tol)
      in.Fail("layer " + std::to_string(i) + " overlaps layer " + std::to_string(i - 1));
    L.voxelOffset = d.nVoxels;
    d.nVoxels += L.nVoxels;
    if (d.nVoxels > 0xffffffffu) in.Fail("too many voxels");
    d.layers.push_back(std::move(L));
  }
  in.Next("end", 1);
  if (!in.AtEnd()) in.Fail("unexpected content after 'end'");
  return d;
}

}  // namespace caloforge
