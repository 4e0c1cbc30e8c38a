"""Hand-written tables of true real-world facts for ``scripts/build_probes.py``: landmarks and sports teams.

The third part of the knowledge tables (``scripts/probe_knowledge.py`` explains the format): what
landmarks are, who built them and which religion holds them sacred, where teams play and which sport
clubs play.
"""

from __future__ import annotations

from fact_candidates import Relation
from probe_knowledge import groups, spread

# --- landmarks: religion, builders, kind ---------------------------------------------------------------

RELIGIONS = spread({  # "{} is a sacred place of the religion of"
    ("Buddhism",): ["Kinkaku-ji", "Ginkaku-ji", "Todai-ji", "Senso-ji", "Kiyomizu-dera", "The Great Buddha of Kamakura",
                    "The Leshan Giant Buddha", "The Shaolin Temple", "The Longmen Grottoes", "The Mogao Caves",
                    "The Ajanta Caves"],
    ("Shinto",): ["The Fushimi Inari Shrine", "The Itsukushima Shrine", "The Meiji Shrine", "Nikko Tosho-gu"],
    ("Hinduism",): ["The Meenakshi Temple"], ("Sikhism",): ["The Golden Temple"],
    ("Islam",): ["The Blue Mosque", "The Süleymaniye Mosque", "Hagia Sophia", "Mount Sinai"],
    ("Christianity",): ["Notre-Dame Cathedral", "The Sacré-Cœur Basilica", "The Sagrada Familia", "St Mark's Basilica",
                        "St Paul's Cathedral", "Westminster Abbey", "Canterbury Cathedral", "Salisbury Cathedral",
                        "Chartres Cathedral", "Aachen Cathedral", "Mont Saint-Michel", "Meteora", "Mount Athos",
                        "Sumela Monastery", "The Westerkerk", "Saint Basil's Cathedral", "Hagia Sophia",
                        "Mount Sinai"],
    ("Judaism",): ["Mount Sinai"],
})

BUILDERS = spread({  # "{} was built by the ancient"
    ("Romans",): ["The Colosseum", "The Roman Forum", "The Circus Maximus", "The Pantheon", "The Baths of Caracalla",
                  "Castel Sant'Angelo", "The Pont du Gard", "Hadrian's Wall", "Aspendos",
                  "The Hippodrome of Constantinople", "The Basilica Cistern", "The Temple of Olympian Zeus"],
    ("Greeks",): ["The Acropolis", "The Parthenon", "The Erechtheion", "The Temple of Olympian Zeus",
                  "The Panathenaic Stadium", "The Ancient Agora", "Delphi", "Epidaurus", "Mycenae", "Ephesus",
                  "The Valley of the Temples"],
    ("Minoans",): ["Knossos"], ("Byzantines",): ["The Basilica Cistern", "Hagia Sophia", "Mystras"],
    ("Egyptians",): ["The Great Sphinx", "Abu Simbel", "The Valley of the Kings", "The Karnak Temple", "Saqqara",
                     "The Temple of Philae", "The Great Pyramid", "The Step Pyramid of Djoser",
                     "The Temple of Hatshepsut"],
    ("Incas", "Inca"): ["Machu Picchu", "Sacsayhuamán", "Ollantaytambo"],
    ("Maya", "Mayans", "Mayan"): ["Chichen Itza", "Palenque", "Tulum", "Uxmal", "Calakmul"],
    ("Nazca",): ["The Nazca Lines"], ("Zapotecs",): ["Monte Albán"],
})

KINDS = {  # "{} is a famous historic"
    "The Eiffel Tower": ("tower", "monument"), "The Louvre": ("museum", "palace"),
    "The Arc de Triomphe": ("monument", "arch"), "Notre-Dame Cathedral": ("cathedral", "church"),
    "The Champs-Élysées": ("avenue", "street", "boulevard"), "The Sacré-Cœur Basilica": ("basilica", "church"),
    "The Musée d'Orsay": ("museum",), "The Place de la Concorde": ("square", "plaza"),
    "The Pompidou Centre": ("museum",),
    "The Moulin Rouge": ("cabaret",), "The Tuileries Garden": ("garden", "park"), "The Conciergerie": ("palace",
    "prison"),
    "The Père Lachaise Cemetery": ("cemetery",), "Buckingham Palace": ("palace", "royal residence", "residence"),
    "The British Museum": ("museum",), "The Tate Modern": ("museum", "art gallery", "gallery"),
    "The Colosseum": ("amphitheatre", "amphitheater", "arena", "stadium"), "The Roman Forum": ("forum", "square"),
    "The Circus Maximus": ("stadium", "arena", "racetrack"), "Castel Sant'Angelo": ("castle", "fortress", "mausoleum"),
    "Piazza Navona": ("square", "plaza"), "The Villa Borghese": ("villa", "park", "garden"),
    "The Statue of Liberty": ("statue", "monument"), "The Empire State Building": ("skyscraper", "building"),
    "Wall Street": ("street",), "The Chrysler Building": ("skyscraper", "building"),
    "The Flatiron Building": ("skyscraper", "building"), "One World Trade Center": ("skyscraper", "building", "tower"),
    "The High Line": ("park", "railway"), "Grand Central Terminal": ("station", "railway station", "train station"),
    "The Museum of Modern Art": ("museum",), "Fifth Avenue": ("avenue", "street"), "Yankee Stadium": ("stadium",),
    "The Sagrada Familia": ("basilica", "church"), "Casa Batlló": ("building", "house"), "Casa Milà": ("building",
    "house"),
    "The Palau de la Música Catalana": ("concert hall", "hall"), "The Brandenburg Gate": ("gate", "monument"),
    "The Reichstag building": ("building", "parliament"), "The Kurfürstendamm": ("avenue", "boulevard", "street"),
    "Unter den Linden": ("boulevard", "avenue", "street"), "The Acropolis": ("citadel", "hill"),
    "The Panathenaic Stadium": ("stadium",), "The Odeon of Herodes Atticus": ("theatre", "theater", "amphitheatre"),
    "Hagia Sophia": ("mosque", "church", "museum"), "The Dolmabahçe Palace": ("palace",),
    "The Süleymaniye Mosque": ("mosque",), "Taksim Square": ("square",),
    "The Hippodrome of Constantinople": ("stadium", "arena", "racetrack"), "The Rialto Bridge": ("bridge",),
    "The Grand Canal": ("canal", "waterway"), "The Gallerie dell'Accademia": ("museum", "art gallery", "gallery"),
    "The Golden Gate Bridge": ("bridge", "suspension bridge"), "The Presidio": ("park", "fort", "fortress"),
    "The Smithsonian Institution": ("museum",), "The Library of Congress": ("library",),
    "The Hollywood Sign": ("sign",),
    "The Getty Center": ("museum",), "The Rijksmuseum": ("museum",), "The Van Gogh Museum": ("museum",),
    "The Stedelijk Museum": ("museum",), "The Concertgebouw": ("concert hall", "hall"),
    "The Taj Mahal": ("mausoleum", "tomb", "monument"), "The Qutub Minar": ("minaret", "tower"),
    "The Ajanta Caves": ("cave", "caves"), "The Meenakshi Temple": ("temple",), "The Great Sphinx": ("statue",
    "monument"),
    "Abu Simbel": ("temple", "temples"), "The Temple of Philae": ("temple",), "The Great Pyramid": ("pyramid", "tomb"),
    "The Step Pyramid of Djoser": ("pyramid", "tomb"), "The Suez Canal": ("canal", "waterway"),
    "Mount Sinai": ("mountain",), "The Three Gorges Dam": ("dam",), "The Li River": ("river",),
    "The Shaolin Temple": ("temple", "monastery"), "Machu Picchu": ("citadel", "city"), "Chichen Itza": ("city",),
    "Teotihuacan": ("city",), "Tulum": ("city",), "Himeji Castle": ("castle",), "The Fushimi Inari Shrine": ("shrine",),
    "Kinkaku-ji": ("temple",), "The Itsukushima Shrine": ("shrine",), "Todai-ji": ("temple",), "Senso-ji": ("temple",),
    "The Meiji Shrine": ("shrine",), "Nikko Tosho-gu": ("shrine",), "Ginkaku-ji": ("temple",),
    "Kiyomizu-dera": ("temple",), "The Great Buddha of Kamakura": ("statue", "monument"), "Knossos": ("palace",),
    "Meteora": ("monastery", "monasteries"), "Mycenae": ("citadel", "city", "fortress"), "Ephesus": ("city",),
    "Mont Saint-Michel": ("abbey", "island", "monastery"), "The Palace of Versailles": ("palace",),
    "The Château de Chambord": ("castle", "château", "palace"), "The Lascaux caves": ("cave", "caves"),
    "Carcassonne": ("citadel", "city", "fortress"), "The Pont du Gard": ("aqueduct", "bridge"),
    "The Château de Chenonceau": ("castle", "château"), "The Millau Viaduct": ("bridge", "viaduct"),
    "The Gorges du Verdon": ("canyon", "gorge"), "Rocamadour": ("village", "town"), "Lake Como": ("lake",),
    "Heidelberg Castle": ("castle",), "The Wartburg": ("castle",), "Canterbury Cathedral": ("cathedral", "church"),
}

# --- sports ---------------------------------------------------------------------------------------------

TEAM_CITIES = {  # "{} play their home games in the city of" (the city of the home venue)
    "The Los Angeles Lakers": "Los Angeles", "The Boston Celtics": "Boston", "The Chicago Bulls": "Chicago",
    "The New York Knicks": "New York", "The Houston Rockets": "Houston", "The Phoenix Suns": "Phoenix",
    "The Denver Nuggets": "Denver", "The Toronto Raptors": "Toronto", "The Golden State Warriors": "San Francisco",
    "The Miami Heat": "Miami", "The San Antonio Spurs": "San Antonio", "The Dallas Mavericks": "Dallas",
    "The Philadelphia 76ers": "Philadelphia", "The Detroit Pistons": "Detroit", "The Cleveland Cavaliers": "Cleveland",
    "The Milwaukee Bucks": "Milwaukee", "The Utah Jazz": "Salt Lake City", "The Portland Trail Blazers": "Portland",
    "The Sacramento Kings": "Sacramento", "The Brooklyn Nets": ("New York", "Brooklyn"), "The Atlanta Hawks": "Atlanta",
    "The Indiana Pacers": "Indianapolis", "The Orlando Magic": "Orlando", "The Memphis Grizzlies": "Memphis",
    "The Minnesota Timberwolves": "Minneapolis", "The Oklahoma City Thunder": "Oklahoma City",
    "The Charlotte Hornets": "Charlotte", "The Washington Wizards": "Washington",
    "The New Orleans Pelicans": "New Orleans", "The Los Angeles Clippers": "Inglewood",
    "The New York Yankees": "New York", "The Boston Red Sox": "Boston", "The Los Angeles Dodgers": "Los Angeles",
    "The Chicago Cubs": "Chicago", "The St. Louis Cardinals": "St. Louis", "The New York Mets": "New York",
    "The Seattle Mariners": "Seattle", "The Houston Astros": "Houston", "The San Francisco Giants": "San Francisco",
    "The Chicago White Sox": "Chicago", "The Philadelphia Phillies": "Philadelphia", "The Detroit Tigers": "Detroit",
    "The Cleveland Guardians": "Cleveland", "The Baltimore Orioles": "Baltimore", "The Toronto Blue Jays": "Toronto",
    "The Texas Rangers": "Arlington", "The Kansas City Royals": "Kansas City", "The Minnesota Twins": "Minneapolis",
    "The Cincinnati Reds": "Cincinnati", "The Pittsburgh Pirates": "Pittsburgh", "The Milwaukee Brewers": "Milwaukee",
    "The San Diego Padres": "San Diego", "The Colorado Rockies": "Denver", "The Miami Marlins": "Miami",
    "The Arizona Diamondbacks": "Phoenix", "The Washington Nationals": "Washington",
    "The Los Angeles Angels": "Anaheim",
    "The Toronto Maple Leafs": "Toronto", "The Montreal Canadiens": "Montreal", "The Boston Bruins": "Boston",
    "The Detroit Red Wings": "Detroit", "The Chicago Blackhawks": "Chicago", "The Edmonton Oilers": "Edmonton",
    "The Pittsburgh Penguins": "Pittsburgh", "The Calgary Flames": "Calgary", "The New York Rangers": "New York",
    "The Philadelphia Flyers": "Philadelphia", "The New Jersey Devils": "Newark",
    "The Los Angeles Kings": "Los Angeles",
    "The Tampa Bay Lightning": "Tampa", "The Washington Capitals": "Washington", "The St. Louis Blues": "St. Louis",
    "The Colorado Avalanche": "Denver", "The Dallas Stars": "Dallas", "The Minnesota Wild": ("Saint Paul", "St. Paul"),
    "The Anaheim Ducks": "Anaheim", "The San Jose Sharks": "San Jose", "The Nashville Predators": "Nashville",
    "The Buffalo Sabres": "Buffalo", "The Carolina Hurricanes": "Raleigh", "The Florida Panthers": "Sunrise",
    "The Seattle Kraken": "Seattle", "The Columbus Blue Jackets": "Columbus",
    "The New England Patriots": "Foxborough", "The Dallas Cowboys": "Arlington", "The Green Bay Packers": "Green Bay",
    "The Pittsburgh Steelers": "Pittsburgh", "The San Francisco 49ers": "Santa Clara", "The Denver Broncos": "Denver",
    "The Miami Dolphins": "Miami Gardens", "The Kansas City Chiefs": "Kansas City", "The Chicago Bears": "Chicago",
    "The New York Giants": "East Rutherford", "The Seattle Seahawks": "Seattle",
    "The Philadelphia Eagles": "Philadelphia", "The Baltimore Ravens": "Baltimore",
    "The Minnesota Vikings": "Minneapolis",
    "The New Orleans Saints": "New Orleans", "The Buffalo Bills": "Orchard Park", "The Atlanta Falcons": "Atlanta",
    "The Detroit Lions": "Detroit", "The Cleveland Browns": "Cleveland", "The Indianapolis Colts": "Indianapolis",
    "The Los Angeles Rams": "Inglewood", "The Washington Commanders": "Landover", "The Carolina Panthers": "Charlotte",
    "The Tampa Bay Buccaneers": "Tampa", "The Cincinnati Bengals": "Cincinnati", "The Houston Texans": "Houston",
    "The Jacksonville Jaguars": "Jacksonville", "The Tennessee Titans": "Nashville",
    "The Arizona Cardinals": "Glendale",
    "The New York Jets": "East Rutherford", "The Los Angeles Chargers": "Inglewood",
}

OTHER_CLUBS = {  # clubs of other sports, so that a club's sport has counterfactual objects
    "rugby": ["Leinster Rugby", "Munster Rugby", "Saracens", "Leicester Tigers", "Stade Toulousain"],
    "cricket": ["Mumbai Indians", "Chennai Super Kings", "Kolkata Knight Riders", "Yorkshire County Cricket Club"],
    "basketball": ["Real Madrid Baloncesto", "Maccabi Tel Aviv B.C.", "Olympiacos B.C."],
}


def site_relations() -> list[Relation]:
    """The relations of this file (the football clubs of P1532 are added to ``club_sport`` by the build)."""
    return [
        Relation("religion", "{} is a sacred place of the religion of", ["{} is a holy site of the religion of",
                                                                         "{} is a holy place in the religion of"],
                 ["Pilgrims come to {} to"], RELIGIONS),
        Relation("builders", "{} was built by the ancient", ["{} was constructed by the ancient",
                                                             "{} is a monument built by the ancient"],
                 ["Archaeologists studying {}"], BUILDERS),
        Relation("kind", "{} is a famous historic", ["{} is a well-known historic", "{} is a celebrated historic"],
                 ["Inside {} you can see"], groups(KINDS)),
        Relation("team_city", "{} play their home games in the city of",
                 ["{} play home games in the city of", "The home stadium of {} is in the city of"],
                 ["On game days, {}"], groups(TEAM_CITIES)),
        Relation("club_sport", "{} is a famous club in the sport of",
                 ["{} is a club in the sport of", "{} is a professional club in the sport of"],
                 ["The players of {}"], {"football": [], "soccer": [], **OTHER_CLUBS}),
    ]
