"""Test helper: bright rotating discs injected into an SDC2-noise cube (the simulator's own renderer)."""
import numpy as np
from astropy.io import fits

from cianna.sim.hi_cube import render_disc, simulate_hi_cube


def discs_in_noise(out, shape, discs, seed):
    """Write ``out/cube.fits``: SDC2 noise (``simulate_hi_cube`` without sources) plus one rendered disc per row
    of ``discs`` = ``(x, y, channel, flux [Jy Hz], hi_size ["], i, pa [deg], v_flat [km/s])``.

    Returns
    -------
    cube_path, header, noise : pathlib.Path, astropy.io.fits.Header, simulator result of the noise cube
    rendered : list of (float, object)
        Centre frequency [Hz] and the rendered disc (its ``w20`` is the measured line width) of each row.
    """
    noise = simulate_hi_cube(out / "noise", shape=shape, seed=seed, n_sources=0)
    data = fits.getdata(noise.cube_path).astype(np.float32)
    header = fits.getheader(noise.cube_path)
    rendered = []
    for x, y, z, flux, size, incl, pa, vflat in discs:
        nu = float(np.interp(z, np.arange(noise.freqs.size), noise.freqs))
        m = render_disc(x, y, nu, dict(line_flux_integral=flux, hi_size=size, i=incl, pa=pa, m_hi=1e10,
                                       v_flat=vflat), noise.freqs, shape[:2])
        z0, y0, x0 = m.origin
        nz, ny, nx = m.cubelet.shape
        data[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] += m.cubelet
        rendered.append((nu, m))
    cube_path = out / "cube.fits"
    fits.writeto(cube_path, data, header)
    return cube_path, header, noise, rendered
