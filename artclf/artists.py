"""The 50 artists of Kaggle's "Best Artworks of All Time", and folder-name repair.

The folder names of the real download are not clean: Dürer arrives with a decomposed
umlaut or as mojibake (``Albrecht_Du╠êrer``, ``Albrecht_DuΓòá├¬rer``, ``Albrecht_DuÔòá├¬rer``)
because the zip was made on a system that wrote NFD names and unpacked with cp437/cp850.
Everything that compares an artist name goes through :func:`fold`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class Artist:
    name: str  # as in artists.csv
    years: str
    genre: str
    nationality: str
    paintings: int  # file count in the real download

    @property
    def folder(self) -> str:
        """The folder name the real download uses (NFC; the real Dürer folder is not)."""
        return self.name.replace(" ", "_")


# Counts are those of the real download (sum 8,446); order is that of artists.csv.
ARTISTS: tuple[Artist, ...] = (
    Artist("Amedeo Modigliani", "1884 - 1920", "Expressionism", "Italian", 193),
    Artist("Vasiliy Kandinskiy", "1866 - 1944", "Expressionism,Abstractionism", "Russian", 88),
    Artist("Diego Rivera", "1886 - 1957", "Social Realism,Muralism", "Mexican", 70),
    Artist("Claude Monet", "1840 - 1926", "Impressionism", "French", 73),
    Artist("Rene Magritte", "1898 - 1967", "Surrealism,Impressionism", "Belgian", 194),
    Artist("Salvador Dali", "1904 - 1989", "Surrealism", "Spanish", 139),
    Artist("Edouard Manet", "1832 - 1883", "Realism,Impressionism", "French", 90),
    Artist("Andrei Rublev", "1360 - 1430", "Byzantine Art", "Russian", 99),
    Artist("Vincent van Gogh", "1853 - 1890", "Post-Impressionism", "Dutch", 877),
    Artist("Gustav Klimt", "1862 - 1918", "Symbolism,Art Nouveau", "Austrian", 117),
    Artist("Hieronymus Bosch", "1450 - 1516", "Northern Renaissance", "Dutch", 137),
    Artist("Kazimir Malevich", "1879 - 1935", "Suprematism", "Russian", 126),
    Artist("Mikhail Vrubel", "1856 - 1910", "Symbolism", "Russian", 171),
    Artist("Pablo Picasso", "1881 - 1973", "Cubism", "Spanish", 439),
    Artist("Peter Paul Rubens", "1577 - 1640", "Baroque", "Flemish", 141),
    Artist("Pierre-Auguste Renoir", "1841 - 1919", "Impressionism", "French", 336),
    Artist("Francisco Goya", "1746 - 1828", "Romanticism", "Spanish", 291),
    Artist("Frida Kahlo", "1907 - 1954", "Primitivism,Surrealism", "Mexican", 120),
    Artist("El Greco", "1541 - 1614", "Mannerism", "Spanish,Greek", 87),
    Artist("Albrecht Dürer", "1471 - 1528", "Northern Renaissance", "German", 328),
    Artist("Alfred Sisley", "1839 - 1899", "Impressionism", "French,British", 259),
    Artist("Pieter Bruegel", "1525 - 1569", "Northern Renaissance", "Flemish", 134),
    Artist("Marc Chagall", "1887 - 1985", "Primitivism", "French,Jewish,Belarusian", 239),
    Artist("Giotto di Bondone", "1267 - 1337", "Proto Renaissance", "Italian", 119),
    Artist("Sandro Botticelli", "1445 - 1510", "Early Renaissance", "Italian", 164),
    Artist("Caravaggio", "1571 - 1610", "Baroque", "Italian", 55),
    Artist("Leonardo da Vinci", "1452 - 1519", "High Renaissance", "Italian", 143),
    Artist("Diego Velazquez", "1599 - 1660", "Baroque", "Spanish", 128),
    Artist("Henri Matisse", "1869 - 1954", "Impressionism,Post-Impressionism", "French", 186),
    Artist("Jan van Eyck", "1390 - 1441", "Northern Renaissance", "Flemish", 81),
    Artist("Edgar Degas", "1834 - 1917", "Impressionism", "French", 702),
    Artist("Rembrandt", "1606 - 1669", "Baroque", "Dutch", 262),
    Artist("Titian", "1488 - 1576", "High Renaissance,Mannerism", "Italian", 255),
    Artist("Henri de Toulouse-Lautrec", "1864 - 1901", "Post-Impressionism", "French", 81),
    Artist("Gustave Courbet", "1819 - 1877", "Realism", "French", 59),
    Artist("Camille Pissarro", "1830 - 1903", "Impressionism,Post-Impressionism", "French", 91),
    Artist("William Turner", "1775 - 1851", "Romanticism", "British", 66),
    Artist("Edvard Munch", "1863 - 1944", "Symbolism,Expressionism", "Norwegian", 67),
    Artist("Paul Cezanne", "1839 - 1906", "Post-Impressionism", "French", 47),
    Artist("Eugene Delacroix", "1798 - 1863", "Romanticism", "French", 31),
    Artist("Henri Rousseau", "1844 - 1910", "Primitivism", "French", 70),
    Artist("Georges Seurat", "1859 - 1891", "Post-Impressionism", "French", 43),
    Artist("Paul Klee", "1879 - 1940", "Expressionism,Abstractionism,Surrealism", "German,Swiss", 188),
    Artist("Piet Mondrian", "1872 - 1944", "Neoplasticism", "Dutch", 84),
    Artist("Joan Miro", "1893 - 1983", "Surrealism", "Spanish", 102),
    Artist("Andy Warhol", "1928 - 1987", "Pop Art", "American", 181),
    Artist("Paul Gauguin", "1848 - 1903", "Symbolism,Post-Impressionism", "French", 311),
    Artist("Raphael", "1483 - 1520", "High Renaissance", "Italian", 109),
    Artist("Michelangelo", "1475 - 1564", "High Renaissance", "Italian", 49),
    Artist("Jackson Pollock", "1912 - 1956", "Abstract Expressionism", "American", 24),
)

CSV_COLUMNS = ("id", "name", "years", "genre", "nationality", "bio", "wikipedia", "paintings")
# Beside artists.csv in a set that `artclf sample-data` made: what it planted. Its presence marks a
# generated set (shard records it; tests and benchmarks read it).
SAMPLE_TRUTH = "sample_truth.json"

# Codecs a UTF-8 name has been wrongly decoded with by unzip tools (DOS code pages first).
_MOJIBAKE_CODECS = ("cp437", "cp850", "cp1252", "latin-1")


def repair_mojibake_rounds(name: str) -> tuple[str, int]:
    """Undo repeated "UTF-8 bytes read as a DOS/Windows code page" damage; also say how many
    rounds it took (0: the name was clean), so the least-mangled of two copies can be chosen.

    ``Albrecht_DuΓòá├¬rer`` -> ``Albrecht_Du╠êrer`` -> ``Albrecht_Dürer`` (decomposed): 2 rounds.
    """
    for rounds in range(4):  # the real set has at most two layers
        for codec in _MOJIBAKE_CODECS:
            try:
                fixed = name.encode(codec).decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
            if fixed != name:
                name = fixed
                break
        else:
            return name, rounds
    return name, 4


def repair_mojibake(name: str) -> str:
    """:func:`repair_mojibake_rounds` without the count; a clean name is returned unchanged."""
    return repair_mojibake_rounds(name)[0]


def fold(name: str) -> str:
    """Folder or csv name -> the ASCII key labels are sorted by (``Albrecht_Durer``)."""
    name = unicodedata.normalize("NFC", repair_mojibake(name))
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return ascii_name.replace(" ", "_")


def class_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """Label order of DESIGN.md: sorted ASCII-folded names; index = class label."""
    folded = sorted({fold(n) for n in names})
    if len(folded) != len(names):
        raise ValueError(f"artist names collide after folding: {sorted(names)}")
    return folded


_KNOWN = {fold(a.name): a.name for a in ARTISTS}


def display_names(classes: list[str], given: list[str] | None = None) -> list[str]:
    """The names people read, in class order: ``given`` (``artists.csv``'s names, carried in
    ``_info.json`` and ``model.pt``) when it matches ``classes``, else the Kaggle name of a
    known class id, else the id with spaces (``Albrecht_Durer`` -> ``Albrecht Dürer``)."""
    if given is not None and len(given) == len(classes) and [fold(g) for g in given] == list(classes):
        return list(given)
    return [_KNOWN.get(c, c.replace("_", " ")) for c in classes]
