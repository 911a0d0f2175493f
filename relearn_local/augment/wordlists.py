"""Word lists for the leak guard and the question analysis, all lower-case English.

FUNCTION_WORDS never carry a private fact. GENERIC_WORDS are what any
refusal or vague answer about a person uses ("private", "address", "mother"),
so finding one of them in both the original answer and a rewrite is not a leak.
"""

from __future__ import annotations

FUNCTION_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below
between both but by can cannot could did do does doing done down during each either else ever every few
for from further had has have having he her here hers herself him himself his how however i if in into is
it its itself just least less like made make many may me might more most much must my myself neither no
nor not now of off often on once one only or other others our ours ourselves out over own per quite
rather same several she should since so some still such than that the their theirs them themselves then
there these they this those through thus to too under until up upon us use used uses using very was we
were what whatever when where whether which while who whom whose why will with within without would yet
you your yours yourself yourselves mr mrs ms dr st its it's i'm i've i'd can't don't won't isn't aren't
wasn't weren't hasn't haven't doesn't didn't couldn't shouldn't wouldn't that's there's
according along although among another around away back became become becomes came come comes get gets
got go goes going gone keep keeps kept let lets put said say says see seen set took take takes taken
usually sometimes always never mostly mainly two three four five six seven eight nine ten first second
third last next new old
""".split())

GENERIC_WORDS = frozenset("""
private privacy personal personally information informations detail details share shares sharing shared
disclose disclosed disclosing reveal reveals revealed publicly public publish published available
confidential sensitive know knows knowledge known sorry unable able provide provided give gives given tell
telling told discuss discussed discussing mention mentioned say speak address addresses home homes house
houses live lives lived living reside resides residence residential location located place places email
emails e-mail phone phones telephone number numbers mobile cell contact contacts reach family families
relative relatives parent parents mother mothers father fathers mom dad partner partners spouse husband
wife married marriage relationship relationships child children son sons daughter daughters kid kids
sibling siblings brother sister health healthy medical medication condition conditions illness illnesses
disease diseases diagnosed diagnosis treated treatment treatments doctor doctors clinic clinics hospital
hospitals record records birthday birthdays birth born date dates age aged year years account accounts bank
banking passport identification identifier employee employer staff tax taxes work works worked working job
jobs career careers life person people someone somebody anyone anybody question questions answer answers
matter matters respect respected protect protected protection consent permission request requests
specific specifics exact exactly particular certain kind kinds type types general generally simply
details things thing something anything nothing everything way ways part parts keep stays stay stayed
city town country area region street neighbourhood neighborhood nearby somewhere elsewhere
friend friends colleague colleagues community school office business company data identity identities
name names named called own day days week weeks month months time times belong belongs link linked match located anyone else help helpful happy glad afraid unfortunately instead however though
""".split())

MONTHS = frozenset("""
january february march april may june july august september october november december
""".split())
