using System;

namespace BatchNorm.Mpi.Tests;

/// <summary>Where no usable MPI library is installed, the package says what it looked for and how to install it. No MPI needed.</summary>
public class LibraryTests
{
    [Fact]
    public void A_missing_library_names_every_file_looked_for_and_how_to_install_OpenMPI()
    {
        var e = Assert.Throws<DllNotFoundException>(() => OpenMpi.Load(["libmpi-absent.so.40", "libmpi-absent.so"]));
        Assert.Contains("looked for libmpi-absent.so.40 and then libmpi-absent.so", e.Message, StringComparison.Ordinal);
        Assert.Contains("apt-get install openmpi-bin libopenmpi-dev", e.Message, StringComparison.Ordinal);
        Assert.Contains("LD_LIBRARY_PATH", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_library_that_is_not_OpenMPI_is_refused_by_name()
    {
        // The C math library loads, but has none of OpenMPI's globals: so would MPICH's libmpi.so.12.
        var e = Assert.Throws<EntryPointNotFoundException>(() => OpenMpi.Load(["libm.so.6"]));
        Assert.StartsWith("libm.so.6 was found but has no symbol ompi_mpi_comm_world, so it is not OpenMPI.", e.Message, StringComparison.Ordinal);
        Assert.Contains("OpenMPI 4.x", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_package_looks_for_OpenMPI_4_by_its_soname_first()
        => Assert.Equal(["libmpi.so.40", "libmpi.so"], OpenMpi.LibraryNames);
}
