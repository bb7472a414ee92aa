/* caloforge_inference.h: a caloforge TorchScript export behind a plain C interface.
 *
 * Why C: the Geant4 libraries of the calzone wheel use the old libstdc++ string ABI, LibTorch
 * the new one; the two cannot share a std::string. This unit is the only one that includes
 * LibTorch (compiled with the torch wheel's flags), the Geant4 side sees pointers and sizes.
 *
 *   char err[512];
 *   cf_model* m = cf_open("model.pt", err, sizeof err);        // NULL + one-line err on failure
 *   cf_meta(m, "condition_names")                              // "incident_energy incident_theta ..."
 *   cf_generate(m, n, noise, conditions, out, err, sizeof err) // noise (n, noise_dim), conditions
 *                                                              // (n, n_conditions, physical units),
 *                                                              // out (n, n_voxels) MeV; 0 on success
 *   cf_close(m);
 *
 * The metadata keys are those of caloforge.export.flat_metadata (caloforge.txt in the export):
 * family, geometry, n_voxels, noise_dim, noise_distribution, noise_mean, noise_std,
 * condition_names, energy_min_mev, energy_max_mev. Inference runs on the CPU with
 * CALOFORGE_FAST_THREADS intra-op threads (default 1: one Geant4 thread, one inference thread).
 */
#ifndef CALOFORGE_INFERENCE_H
#define CALOFORGE_INFERENCE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cf_model cf_model;

cf_model* cf_open(const char* path, char* err, size_t err_size);
/* The flat metadata value of `key`, or NULL; valid until cf_close. */
const char* cf_meta(const cf_model* model, const char* key);
long cf_n_voxels(const cf_model* model);
long cf_noise_dim(const cf_model* model);
long cf_n_conditions(const cf_model* model);
int cf_generate(cf_model* model, long n, const float* noise, const float* conditions, float* out, char* err,
                size_t err_size);
void cf_close(cf_model* model);

#ifdef __cplusplus
}
#endif

#endif
