"""Build (or re-check) knowscope's bundled fact sets, ``knowscope/data/facts.json`` and ``facts_extended.json``.

The bundled facts are CounterFact-format records of facts that the DEFAULT model
(SmolLM2-135M-Instruct) actually knows: a fact is kept only when the model's greedy next token
after the filled prompt (BOS prepended, :func:`knowscope.knowledge.fact_accuracy`'s convention)
is the first token of ``" " + target_true``. Tracing and editing need facts the model knows:
a trace of a fact the model gets wrong localises nothing, and an edit's efficacy is only
meaningful against a real prior belief.

The candidates below (relations, subjects, objects, templates) are hand-written. All relations
are many-to-one, so every fact has neighbourhood prompts: the same relation asked about OTHER
subjects with the same true object (CounterFact's specificity test). Neighbourhood prompts the
model answers correctly are preferred, so that an edit's neighbourhood score measures real
damage rather than noise on prompts the model never knew.

Two sets are built from the same code. ``--set default`` (the default) is the bundled
``facts.json``: RELATIONS below, at most ``MAX_FACTS_PER_RELATION`` facts per relation.
``--set extended`` is ``facts_extended.json``, a larger set for sequential-editing benchmarks (hundreds
of edits plus a never-edited probe set): RELATIONS with the extra subjects of EXTRA_GROUPS, plus the
relations of EXTENDED_RELATIONS, at most ``MAX_FACTS_PER_RELATION_EXTENDED`` facts per relation, and
every subject unique across the set (see the comment above EXTRA_GROUPS).

Usage::

    python scripts/build_facts.py                           # build knowscope/data/facts.json
    python scripts/build_facts.py --out my.json             # build elsewhere
    python scripts/build_facts.py --check                   # re-verify the bundled file; exit 1 if a fact is not known
    python scripts/build_facts.py --set extended            # build knowscope/data/facts_extended.json
    python scripts/build_facts.py --set extended --check    # re-verify it

The build is deterministic: candidates are visited in the order written here, the
counterfactual object is chosen by a fixed rule, and the model runs in eval mode without
sampling.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "knowscope" / "data" / "facts.json"
EXTENDED_OUT = REPO / "knowscope" / "data" / "facts_extended.json"
FACT_SETS = ("default", "extended")

MAX_NEIGHBORS = 10  # CounterFact stores 10 neighbourhood prompts per record
MIN_NEIGHBORS = 5
MIN_PARAPHRASES = 2
MAX_FACTS_PER_RELATION = 40

log = logging.getLogger("build_facts")


@dataclass
class Relation:
    """One many-to-one relation: templates plus ``object -> subjects`` candidate groups."""

    relation_id: str
    template: str
    paraphrases: list[str]
    generation: list[str]
    groups: dict[str, list[str]] = field(default_factory=dict)


RELATIONS: list[Relation] = [
    Relation(
        "P37",  # official language of a country
        "The official language of {} is",
        ["In {}, the official language is", "The official language in {} is", "People in {} speak"],
        ["In {}, most people speak", "The newspapers of {} are written in"],
        {
            "Spanish": ["Mexico", "Argentina", "Peru", "Colombia", "Chile", "Spain", "Venezuela", "Cuba", "Bolivia",
                        "Ecuador", "Uruguay", "Paraguay", "Guatemala", "Honduras", "Nicaragua", "Costa Rica",
                        "Panama", "El Salvador", "the Dominican Republic"],
            "Portuguese": ["Brazil", "Portugal", "Angola", "Mozambique", "Cape Verde", "Guinea-Bissau",
                           "São Tomé and Príncipe"],
            "French": ["France", "Senegal", "Ivory Coast", "Mali", "Niger", "Burkina Faso", "Monaco", "Gabon",
                       "Benin", "Togo", "Guinea", "the Republic of the Congo"],
            "Arabic": ["Egypt", "Saudi Arabia", "Jordan", "Iraq", "Syria", "Lebanon", "Libya", "Yemen", "Oman",
                       "Kuwait", "Qatar", "Bahrain", "Algeria", "Morocco", "Tunisia", "Sudan",
                       "the United Arab Emirates"],
            "English": ["Australia", "New Zealand", "the United Kingdom", "the United States", "Jamaica", "Nigeria",
                        "Ghana", "Liberia", "the Bahamas", "Barbados"],
            "German": ["Germany", "Austria", "Liechtenstein", "the German Democratic Republic", "Prussia",
                       "Bavaria"],
            "Russian": ["Russia", "the Soviet Union", "Belarus", "the Russian Empire", "Siberia", "Chechnya"],
        },
    ),
    Relation(
        "P17",  # country a city is in
        "{} is a city in the country of",
        ["{} is located in the country of", "{} is a large city in the country of",
         "The city of {} is located in the country of"],
        ["The streets of {} are", "Tourists who visit {} often"],
        {
            "Japan": ["Tokyo", "Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo", "Kobe", "Hiroshima", "Fukuoka",
                      "Nagasaki", "Sendai"],
            "France": ["Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Bordeaux", "Strasbourg", "Lille",
                       "Nantes", "Montpellier"],
            "Germany": ["Berlin", "Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart", "Dresden", "Leipzig",
                        "Düsseldorf", "Bremen", "Hanover"],
            "Italy": ["Rome", "Milan", "Naples", "Florence", "Venice", "Turin", "Bologna", "Palermo", "Genoa",
                      "Verona", "Pisa"],
            "Spain": ["Madrid", "Barcelona", "Seville", "Valencia", "Bilbao", "Málaga", "Granada", "Zaragoza",
                      "Toledo", "Salamanca"],
            "China": ["Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Wuhan", "Chengdu", "Nanjing", "Hangzhou",
                      "Xi'an", "Tianjin"],
            "India": ["Mumbai", "Delhi", "Bangalore", "Kolkata", "Chennai", "Hyderabad", "Pune", "Jaipur",
                      "Ahmedabad", "Lucknow"],
            "Russia": ["Moscow", "Saint Petersburg", "Novosibirsk", "Kazan", "Yekaterinburg", "Vladivostok",
                       "Samara", "Omsk"],
            "Canada": ["Toronto", "Montreal", "Vancouver", "Calgary", "Ottawa", "Edmonton", "Winnipeg", "Halifax"],
            "Australia": ["Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra", "Hobart", "Darwin"],
            "Brazil": ["São Paulo", "Rio de Janeiro", "Brasília", "Salvador", "Recife", "Fortaleza", "Manaus",
                       "Porto Alegre"],
            "Turkey": ["Istanbul", "Ankara", "Izmir", "Antalya", "Bursa", "Konya", "Trabzon"],
            "Egypt": ["Cairo", "Alexandria", "Luxor", "Giza", "Aswan", "Port Said"],
        },
    ),
    Relation(
        "P276",  # city a landmark is located in
        "{} can be found in the city of",
        ["{} is located in the city of", "{} stands in the city of", "{} is a landmark in the city of"],
        ["Every year, visitors to {}", "The history of {} began"],
        {
            "Paris": ["The Eiffel Tower", "The Louvre", "The Arc de Triomphe", "Notre-Dame Cathedral",
                      "The Champs-Élysées", "The Sacré-Cœur Basilica", "The Musée d'Orsay", "The Place de la Concorde",
                      "The Pompidou Centre"],
            "London": ["Big Ben", "Buckingham Palace", "Westminster Abbey", "Trafalgar Square", "The British Museum",
                       "Tower Bridge", "Piccadilly Circus", "Hyde Park", "St Paul's Cathedral"],
            "Rome": ["The Colosseum", "The Trevi Fountain", "The Pantheon", "The Roman Forum", "The Spanish Steps",
                     "The Circus Maximus", "The Baths of Caracalla", "Castel Sant'Angelo"],
            "New York": ["The Statue of Liberty", "The Empire State Building", "Central Park", "Times Square",
                         "The Brooklyn Bridge", "Wall Street", "Rockefeller Center", "The Chrysler Building",
                         "The Metropolitan Museum of Art"],
            "Moscow": ["Red Square", "The Kremlin", "Saint Basil's Cathedral", "The Bolshoi Theatre",
                       "Lenin's Mausoleum", "Gorky Park"],
            "Beijing": ["The Forbidden City", "Tiananmen Square", "The Temple of Heaven", "The Summer Palace",
                        "The Great Hall of the People", "The Bird's Nest stadium"],
            "Barcelona": ["The Sagrada Familia", "Park Güell", "Camp Nou", "La Rambla", "Casa Batlló", "Casa Milà"],
            "Berlin": ["The Brandenburg Gate", "The Reichstag building", "Checkpoint Charlie", "Alexanderplatz",
                       "Museum Island", "The Kurfürstendamm"],
            "Athens": ["The Acropolis", "The Parthenon", "The Erechtheion", "The Temple of Olympian Zeus",
                       "The Panathenaic Stadium", "The Ancient Agora"],
            "Istanbul": ["Hagia Sophia", "The Blue Mosque", "Topkapi Palace", "The Grand Bazaar", "Galata Tower",
                         "The Basilica Cistern"],
            "Venice": ["St Mark's Basilica", "The Rialto Bridge", "The Doge's Palace", "The Grand Canal",
                       "The Bridge of Sighs", "St Mark's Square"],
            "San Francisco": ["The Golden Gate Bridge", "Alcatraz Island", "Fisherman's Wharf", "Lombard Street",
                              "Coit Tower", "Chinatown's Dragon Gate"],
        },
    ),
    Relation(
        "P641",  # sport an athlete plays
        "{} is a professional",
        ["{} is a famous professional", "{} is known as a professional", "{} plays the sport of"],
        ["{} is best known for", "When {} was young, he"],
        {
            "soccer": ["Lionel Messi", "Cristiano Ronaldo", "Neymar", "Kylian Mbappé", "Zinedine Zidane", "Pelé",
                       "Diego Maradona", "David Beckham", "Wayne Rooney", "Thierry Henry", "Ronaldinho",
                       "Zlatan Ibrahimović", "Mohamed Salah", "Robert Lewandowski", "Luka Modrić",
                       "Andrés Iniesta", "Erling Haaland", "Harry Kane"],
            "basketball": ["Michael Jordan", "LeBron James", "Kobe Bryant", "Stephen Curry", "Kevin Durant",
                           "Shaquille O'Neal", "Magic Johnson", "Larry Bird", "Kareem Abdul-Jabbar",
                           "Dirk Nowitzki", "Tim Duncan", "Giannis Antetokounmpo", "Yao Ming"],
            "baseball": ["Babe Ruth", "Derek Jeter", "Mickey Mantle", "Hank Aaron", "Barry Bonds", "Ichiro Suzuki",
                         "Shohei Ohtani", "Alex Rodriguez", "Jackie Robinson", "Willie Mays", "Lou Gehrig",
                         "Ty Cobb"],
            "tennis": ["Roger Federer", "Rafael Nadal", "Novak Djokovic", "Serena Williams", "Venus Williams",
                       "Andy Murray", "Maria Sharapova", "Pete Sampras", "Andre Agassi", "Steffi Graf",
                       "Björn Borg", "John McEnroe"],
            "golf": ["Tiger Woods", "Jack Nicklaus", "Arnold Palmer", "Phil Mickelson", "Rory McIlroy",
                     "Gary Player", "Seve Ballesteros", "Jordan Spieth"],
            "hockey": ["Wayne Gretzky", "Sidney Crosby", "Alexander Ovechkin", "Mario Lemieux", "Bobby Orr",
                       "Gordie Howe", "Connor McDavid", "Jaromír Jágr"],
            "cricket": ["Sachin Tendulkar", "Virat Kohli", "Don Bradman", "Brian Lara", "Shane Warne", "MS Dhoni",
                        "Ricky Ponting", "Jacques Kallis"],
        },
    ),
    Relation(
        "P103",  # native language of a person
        "The native language of {} is",
        ["{} grew up speaking", "The first language of {} is", "The native tongue of {} is"],
        ["{} was born in", "Where {} grew up, people"],
        {
            "French": ["Victor Hugo", "Jean-Paul Sartre", "Voltaire", "Molière", "Albert Camus", "Emmanuel Macron",
                       "Charles de Gaulle", "Claude Monet", "Édith Piaf", "Jacques Chirac", "Gustave Flaubert",
                       "Marcel Proust"],
            "German": ["Angela Merkel", "Johann Wolfgang von Goethe", "Friedrich Nietzsche", "Immanuel Kant",
                       "Karl Marx", "Martin Luther", "Thomas Mann", "Franz Kafka", "Otto von Bismarck",
                       "Friedrich Schiller", "Helmut Kohl"],
            "Russian": ["Vladimir Putin", "Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov", "Alexander Pushkin",
                        "Mikhail Gorbachev", "Boris Yeltsin", "Ivan Turgenev", "Vladimir Lenin"],
            "Spanish": ["Miguel de Cervantes", "Gabriel García Márquez", "Jorge Luis Borges", "Pablo Neruda",
                        "Federico García Lorca", "Mario Vargas Llosa", "Octavio Paz", "Isabel Allende"],
            "Italian": ["Dante Alighieri", "Leonardo da Vinci", "Galileo Galilei", "Umberto Eco",
                        "Silvio Berlusconi", "Giuseppe Verdi", "Niccolò Machiavelli", "Giovanni Boccaccio"],
            "Japanese": ["Haruki Murakami", "Hayao Miyazaki", "Akira Kurosawa", "Yukio Mishima", "Shinzo Abe",
                         "Yoko Ono", "Hirohito"],
            "Dutch": ["Vincent van Gogh", "Rembrandt", "Johannes Vermeer", "Anne Frank", "Erasmus", "Piet Mondrian"],
        },
    ),
    Relation(
        "P495",  # country a company or brand comes from
        "{} is a company from the country of",
        ["{} is a company based in the country of", "{} was founded in the country of",
         "{} is headquartered in the country of"],
        ["The products of {} are", "{} announced today that"],
        {
            "Japan": ["Toyota", "Honda", "Nissan", "Mazda", "Subaru", "Mitsubishi", "Suzuki", "Sony", "Nintendo",
                      "Panasonic", "Toshiba", "Canon", "Nikon", "Yamaha", "Fujifilm"],
            "Germany": ["BMW", "Mercedes-Benz", "Volkswagen", "Audi", "Porsche", "Siemens", "Adidas", "Bosch", "SAP",
                        "Bayer", "Lufthansa", "Puma", "BASF"],
            "Italy": ["Ferrari", "Fiat", "Lamborghini", "Maserati", "Alfa Romeo", "Gucci", "Prada", "Ducati",
                      "Pirelli", "Benetton"],
            "France": ["Renault", "Peugeot", "Citroën", "Michelin", "Chanel", "L'Oréal", "Louis Vuitton", "Danone",
                       "Total", "Carrefour"],
            "Sweden": ["Volvo", "IKEA", "Ericsson", "Saab", "Spotify", "H&M", "Electrolux", "Scania"],
            "Finland": ["Nokia", "Rovio", "Kone", "Marimekko", "Fiskars", "Supercell"],
        },
    ),
    Relation(
        "P176",  # company that makes or develops a product
        "{} was developed by",
        ["{} was created by", "{} was designed by", "The company behind {} is"],
        ["{} is popular because", "The first version of {}"],
        {
            "Apple": ["The iPhone", "The iPad", "The MacBook", "The iPod", "The iMac", "Safari", "macOS", "iTunes",
                      "Siri", "iOS", "AirPods"],
            "Microsoft": ["Windows", "The Xbox", "Internet Explorer", "Bing", "Outlook", "PowerPoint", "Excel",
                          "Skype", "Visual Studio", "Word"],
            "Google": ["Android", "Gmail", "Chrome OS", "The Pixel phone", "Google Maps", "TensorFlow", "Chromium",
                       "AdSense"],
            "Sony": ["The PlayStation", "The Walkman", "The Xperia phone", "The Bravia television", "The PSP",
                     "The Cyber-shot camera"],
            "Nintendo": ["The Game Boy", "The Wii", "The Nintendo DS", "The GameCube", "The Super NES",
                         "The Nintendo 64", "The Switch console"],
            "Boeing": ["The 747", "The 737", "The Dreamliner", "The B-52 bomber", "The 777", "The 767"],
        },
    ),
    Relation(
        "P30",  # continent a country is on
        "{} is a country on the continent of",
        ["{} is located on the continent of", "{} is a nation on the continent of", "{} is part of the continent of"],
        ["The climate of {} is", "The history of {} is"],
        {
            "Europe": ["France", "Germany", "Italy", "Spain", "Poland", "Portugal", "Sweden", "Norway", "Austria",
                       "Belgium", "Greece", "Hungary", "Denmark", "Finland", "the Netherlands", "Switzerland"],
            "Asia": ["China", "Japan", "India", "Thailand", "Vietnam", "Indonesia", "Mongolia", "Nepal", "Cambodia",
                     "Laos", "Malaysia", "the Philippines", "South Korea", "Bangladesh", "Pakistan"],
            "Africa": ["Nigeria", "Kenya", "Egypt", "Ethiopia", "Ghana", "Morocco", "Senegal", "Tanzania", "Uganda",
                       "Zimbabwe", "Cameroon", "Mali", "Somalia", "Algeria", "Zambia", "Botswana"],
            "South America": ["Brazil", "Argentina", "Peru", "Colombia", "Chile", "Venezuela", "Bolivia", "Ecuador",
                              "Uruguay", "Paraguay"],
        },
    ),
    Relation(
        "P106",  # occupation of a person
        "{} worked as a",
        ["{} is famous as a", "{} is known as a", "By profession, {} was a"],
        ["{} is remembered for", "In his youth, {}"],
        {
            "composer": ["Wolfgang Amadeus Mozart", "Ludwig van Beethoven", "Johann Sebastian Bach",
                         "Frédéric Chopin", "Pyotr Ilyich Tchaikovsky", "Antonio Vivaldi", "Johannes Brahms",
                         "George Frideric Handel", "Joseph Haydn", "Franz Schubert", "Richard Wagner",
                         "Claude Debussy"],
            "painter": ["Pablo Picasso", "Claude Monet", "Rembrandt", "Salvador Dalí", "Paul Cézanne",
                        "Edgar Degas", "Henri Matisse", "Pierre-Auguste Renoir", "Paul Gauguin", "Édouard Manet",
                        "Caravaggio", "Titian"],
            "physicist": ["Albert Einstein", "Isaac Newton", "Niels Bohr", "Max Planck", "Richard Feynman",
                          "Stephen Hawking", "Werner Heisenberg", "Erwin Schrödinger", "Enrico Fermi",
                          "Paul Dirac", "James Clerk Maxwell"],
            "actor": ["Tom Hanks", "Brad Pitt", "Leonardo DiCaprio", "Tom Cruise", "Robert De Niro", "Al Pacino",
                      "Morgan Freeman", "Johnny Depp", "Denzel Washington", "Marlon Brando", "Jack Nicholson"],
            "poet": ["William Wordsworth", "John Keats", "Percy Bysshe Shelley", "Lord Byron", "Emily Dickinson",
                     "Walt Whitman", "Robert Frost", "Sylvia Plath", "T. S. Eliot"],
        },
    ),
]


# --- the extended set -------------------------------------------------------------------------------
#
# ``--set extended`` builds a larger set (knowscope/data/facts_extended.json) for sequential-editing
# benchmarks: the relations above with the extra subjects of EXTRA_GROUPS appended to their candidate
# lists, plus the relations of EXTENDED_RELATIONS, with a higher per-relation cap. The default set never
# reads anything below, so it cannot change. In the extended set every subject is unique, and no prompt
# of a fact names (as a whole word or phrase, ignoring case) the subject of a fact of another relation;
# relations are served in order, so a conflict costs the later relation its candidate (see select_facts).
# Sequential-editing evaluation drops the neighbourhood prompts that name an edited subject, so such
# prompts would be lost anyway, and two facts about one subject would interfere when both are edited.
#
# Relation ids are Wikidata property ids; where one property serves two relations of the set, the second
# gets a suffix naming its kind of subject (``P17-landmark``), so that per-relation grouping keeps them apart.

MAX_FACTS_PER_RELATION_EXTENDED = 80

EXTRA_GROUPS: dict[str, dict[str, list[str]]] = {
    "P17": {
        "Mexico": ["Monterrey", "Puebla", "Tijuana", "Cancún", "Acapulco", "Ciudad Juárez",
                   "Mazatlán"],
        "Poland": ["Warsaw", "Kraków", "Gdańsk", "Wrocław", "Poznań", "Łódź", "Lublin"],
        "Pakistan": ["Karachi", "Lahore", "Islamabad", "Peshawar", "Rawalpindi", "Faisalabad", "Quetta"],
        "Iran": ["Tehran", "Isfahan", "Shiraz", "Tabriz", "Mashhad", "Qom"],
        "Indonesia": ["Jakarta", "Surabaya", "Bandung", "Medan", "Yogyakarta", "Denpasar"],
        "Vietnam": ["Hanoi", "Ho Chi Minh City", "Da Nang", "Haiphong", "Hue", "Nha Trang"],
        "Thailand": ["Bangkok", "Chiang Mai", "Phuket", "Pattaya", "Ayutthaya", "Hat Yai"],
        "South Korea": ["Seoul", "Busan", "Incheon", "Daegu", "Gwangju", "Daejeon"],
        "Portugal": ["Lisbon", "Coimbra", "Faro", "Funchal", "Aveiro", "Évora"],
        "Greece": ["Thessaloniki", "Patras", "Heraklion", "Larissa", "Volos", "Ioannina"],
        "Morocco": ["Casablanca", "Marrakesh", "Fez", "Rabat", "Tangier", "Agadir"],
        "Nigeria": ["Lagos", "Abuja", "Kano", "Ibadan", "Port Harcourt", "Enugu"],
        "South Africa": ["Johannesburg", "Cape Town", "Durban", "Pretoria", "Port Elizabeth", "Bloemfontein"],
        "Sweden": ["Stockholm", "Gothenburg", "Malmö", "Uppsala", "Västerås", "Örebro"],
        "Switzerland": ["Zurich", "Geneva", "Bern", "Basel", "Lausanne", "Lucerne"],
        "Austria": ["Vienna", "Salzburg", "Graz", "Innsbruck", "Linz", "Klagenfurt"],
        "Argentina": ["Buenos Aires", "Mendoza", "Mar del Plata", "La Plata", "Bariloche", "Salta"],
        "Colombia": ["Bogotá", "Medellín", "Cali", "Barranquilla", "Bucaramanga", "Santa Marta"],
        "Ireland": ["Dublin", "Cork", "Galway", "Limerick", "Waterford", "Kilkenny"],
        "Scotland": ["Edinburgh", "Glasgow", "Aberdeen", "Dundee", "Inverness", "Stirling"],
        "England": ["Bristol", "Sheffield", "Oxford", "Brighton", "Coventry", "Norwich", "Exeter"],
    },
    "P276": {
        "Paris": ["The Opéra Garnier", "The Moulin Rouge", "Montmartre", "The Tuileries Garden", "Les Invalides",
                  "The Conciergerie", "The Sainte-Chapelle", "The Latin Quarter", "The Père Lachaise Cemetery"],
        "London": ["The Shard", "Kensington Palace", "The Tate Modern", "Covent Garden", "Abbey Road"],
        "Rome": ["The Capitoline Hill", "The Palatine Hill", "Piazza Navona", "The Villa Borghese", "Trastevere",
                 "The Quirinal Palace"],
        "New York": ["The Flatiron Building", "One World Trade Center", "Madison Square Garden", "Carnegie Hall",
                     "The High Line", "Grand Central Terminal", "The Museum of Modern Art", "Broadway",
                     "The United Nations Headquarters", "Fifth Avenue", "Yankee Stadium"],
        "Barcelona": ["The Gothic Quarter", "Montjuïc", "The Palau de la Música Catalana", "Tibidabo"],
        "Berlin": ["The Pergamon Museum", "Potsdamer Platz", "The East Side Gallery", "Unter den Linden"],
        "Athens": ["The Plaka", "Syntagma Square", "Mount Lycabettus", "The Odeon of Herodes Atticus"],
        "Istanbul": ["The Dolmabahçe Palace", "The Süleymaniye Mosque", "Taksim Square",
                     "The Hippodrome of Constantinople", "The Spice Bazaar", "The Maiden's Tower"],
        "Venice": ["The Gallerie dell'Accademia", "The Peggy Guggenheim Collection", "La Fenice", "The Ca' d'Oro"],
        "San Francisco": ["The Transamerica Pyramid", "The Painted Ladies", "Haight-Ashbury", "The Presidio"],
        "Washington": ["The White House", "The Lincoln Memorial",
                       "The Smithsonian Institution", "The Jefferson Memorial", "The National Mall",
                       "The Library of Congress"],
        "Los Angeles": ["The Hollywood Sign", "The Getty Center", "Griffith Observatory", "Rodeo Drive",
                        "Dodger Stadium", "The Hollywood Walk of Fame", "The Staples Center"],
        "Amsterdam": ["The Rijksmuseum", "The Van Gogh Museum", "Dam Square", "Vondelpark", "The Stedelijk Museum",
                      "The Westerkerk", "The Concertgebouw"],
    },
    "P641": {
        "soccer": ["Johan Cruyff", "Franz Beckenbauer", "Eusébio", "Ferenc Puskás", "Gianluigi Buffon",
                   "Paolo Maldini", "Xavi", "Kaká", "Didier Drogba", "Steven Gerrard", "Frank Lampard", "Gareth Bale",
                   "Karim Benzema", "Sergio Ramos", "Manuel Neuer", "Antoine Griezmann", "Kevin De Bruyne",
                   "Samuel Eto'o", "George Best", "Bobby Charlton", "Marco van Basten", "Alessandro Del Piero",
                   "Francesco Totti", "Roberto Baggio", "Rivaldo", "Romário", "Gabriel Batistuta"],
    },
    "P103": {
        "French": ["Jules Verne", "Alexandre Dumas", "Honoré de Balzac", "Émile Zola", "Charles Baudelaire",
                   "Guy de Maupassant", "Jean-Jacques Rousseau", "Denis Diderot", "Simone de Beauvoir", "Stendhal",
                   "Arthur Rimbaud", "Paul Verlaine", "Blaise Pascal", "Montesquieu"],
        "German": ["Bertolt Brecht", "Hermann Hesse", "Günter Grass", "Heinrich Heine",
                   "Georg Wilhelm Friedrich Hegel", "Arthur Schopenhauer", "Gottfried Wilhelm Leibniz", "Max Weber",
                   "Richard Strauss", "Rainer Maria Rilke", "Sigmund Freud", "Martin Heidegger", "Jürgen Habermas"],
        "Russian": ["Boris Pasternak", "Alexander Solzhenitsyn", "Mikhail Lermontov", "Ivan Bunin", "Maxim Gorky",
                    "Joseph Brodsky", "Dmitri Shostakovich", "Modest Mussorgsky", "Nikolai Rimsky-Korsakov"],
        "Italian": ["Alessandro Manzoni", "Luigi Pirandello", "Italo Calvino",
                    "Giacomo Leopardi", "Primo Levi", "Alberto Moravia", "Gabriele D'Annunzio", "Giacomo Puccini",
                    "Amerigo Vespucci", "Cesare Pavese"],
        "Japanese": ["Yasunari Kawabata", "Kenzaburō Ōe", "Natsume Sōseki", "Ryūnosuke Akutagawa", "Osamu Tezuka",
                     "Katsushika Hokusai", "Yasujirō Ozu", "Kōbō Abe", "Banana Yoshimoto", "Matsuo Bashō",
                     "Osamu Dazai", "Tokugawa Ieyasu", "Oda Nobunaga"],
        "Chinese": ["Confucius", "Lu Xun", "Lao Tzu", "Li Bai", "Du Fu", "Sun Tzu", "Mo Yan", "Ba Jin", "Mencius",
                    "Cao Xueqin"],
        "Greek": ["Homer", "Sophocles", "Euripides", "Herodotus", "Thucydides", "Aeschylus", "Aristophanes", "Hesiod",
                  "Sappho", "Epicurus", "Xenophon", "Plutarch"],
        "Portuguese": ["Fernando Pessoa", "José Saramago", "Luís de Camões", "Jorge Amado", "Machado de Assis",
                       "Eça de Queirós", "Vasco da Gama", "Ferdinand Magellan", "Amália Rodrigues"],
        "Polish": ["Adam Mickiewicz", "Czesław Miłosz", "Bolesław Prus", "Juliusz Słowacki", "Witold Gombrowicz",
                   "Zbigniew Herbert", "Tadeusz Kościuszko"],
    },
    "P495": {
        "Japan": ["Hitachi", "Casio", "Seiko", "Kawasaki", "Sega", "Bandai", "Capcom",
                  "Square Enix", "Uniqlo", "Shiseido", "Asics", "Isuzu", "Daihatsu", "Bridgestone", "Ricoh", "Epson",
                  "Kyocera", "Konami"],
        "Germany": ["Deutsche Bank", "Allianz", "Henkel", "Nivea", "Opel", "Miele", "Haribo", "Lidl", "Aldi",
                    "Hugo Boss", "Zeiss", "Leica", "Deutsche Telekom"],
        "Italy": ["Versace", "Barilla", "Ferrero", "Lavazza", "Olivetti", "Piaggio", "Bulgari", "Eni", "Fendi",
                  "Campari", "Beretta"],
        "France": ["Dior", "Hermès", "Cartier", "Bic", "Dassault", "Thales", "AXA", "Sodexo", "Alstom", "Lacoste",
                   "Évian", "Ubisoft"],
        "China": ["Huawei", "Alibaba", "Baidu", "Tencent", "Lenovo", "Xiaomi", "BYD", "Haier", "ZTE", "Sinopec",
                  "Geely"],
        "India": ["Tata", "Mahindra", "Bajaj", "Infosys", "Wipro", "Reliance Industries", "Godrej", "Hero MotoCorp"],
        "Russia": ["Kaspersky", "Yandex", "Gazprom", "Lukoil", "Aeroflot", "Rosneft", "Lada", "Sberbank"],
    },
    "P30": {
        "Europe": ["Ireland", "Iceland", "Croatia", "Serbia", "Romania", "Bulgaria", "the Czech Republic", "Slovakia",
                   "Slovenia", "Estonia", "Latvia", "Lithuania", "Albania", "Luxembourg", "Malta",
                   "Bosnia and Herzegovina", "North Macedonia", "Montenegro", "Moldova", "Ukraine"],
        "Asia": ["Iran", "Afghanistan", "Sri Lanka", "Myanmar", "Bhutan", "Uzbekistan", "Singapore",
                 "North Korea", "Brunei", "Kyrgyzstan", "Tajikistan", "Turkmenistan", "the Maldives"],
        "Africa": ["Namibia", "Rwanda", "Madagascar", "Malawi", "Chad", "Burundi", "Eritrea", "Lesotho",
                   "South Africa", "Mauritius", "Djibouti", "South Sudan", "Sierra Leone", "Eswatini",
                   "the Central African Republic"],
        "South America": ["Guyana", "Suriname"],
        "North America": ["Canada", "Haiti", "Belize", "Grenada", "Saint Lucia", "Dominica", "Antigua and Barbuda"],
    },
}

EXTENDED_RELATIONS: list[Relation] = [
    Relation(
        "P27",  # country of citizenship of a person
        "{} is a famous person from the country of",
        ["{} is a well-known person from the country of", "{} comes from the country of",
         "{} is a notable citizen of the country of"],
        ["{} is best remembered for", "Early in life, {}"],
        {
            "Japan": ["Shigeru Miyamoto", "Akira Toriyama", "Hideo Kojima", "Takeshi Kitano", "Yayoi Kusama",
                      "Junichiro Koizumi", "Emperor Akihito", "Fumio Kishida", "Ken Watanabe", "Hidetoshi Nakata",
                      "Masashi Kishimoto", "Eiichiro Oda"],
            "India": ["Mahatma Gandhi", "Jawaharlal Nehru", "Narendra Modi", "Rabindranath Tagore", "Amitabh Bachchan",
                      "Indira Gandhi", "A. P. J. Abdul Kalam", "Aishwarya Rai", "Manmohan Singh",
                      "Subhas Chandra Bose", "Vallabhbhai Patel", "B. R. Ambedkar", "Lata Mangeshkar"],
            "Italy": ["Luciano Pavarotti", "Federico Fellini", "Andrea Bocelli", "Giorgio Armani", "Sophia Loren",
                      "Benito Mussolini", "Roberto Benigni", "Monica Bellucci", "Valentino Rossi", "Alessandro Volta",
                      "Guglielmo Marconi", "Maria Montessori", "Giorgia Meloni"],
            "France": ["Napoleon Bonaparte", "Joan of Arc", "Louis Pasteur", "François Mitterrand",
                       "Nicolas Sarkozy", "Brigitte Bardot", "Jacques Cousteau", "Louis XIV",
                       "Antoine de Saint-Exupéry", "François Hollande", "Georges Pompidou", "Serge Gainsbourg"],
            "Germany": ["Konrad Adenauer", "Gerhard Schröder", "Karl Lagerfeld", "Willy Brandt", "Helmut Schmidt",
                        "Johannes Gutenberg", "Wilhelm Röntgen", "Robert Koch", "Rudolf Diesel", "Carl Benz",
                        "Albrecht Dürer", "Olaf Scholz", "Michael Schumacher"],
            "China": ["Mao Zedong", "Xi Jinping", "Deng Xiaoping", "Jack Ma", "Sun Yat-sen", "Zhou Enlai",
                      "Jackie Chan", "Li Keqiang", "Hu Jintao", "Jiang Zemin", "Ai Weiwei", "Zhang Yimou",
                      "Qin Shi Huang"],
            "Canada": ["Justin Trudeau", "Celine Dion", "Justin Bieber", "Shania Twain", "Avril Lavigne",
                       "Leonard Cohen", "Pierre Trudeau", "The Weeknd", "Margaret Atwood", "Terry Fox",
                       "Frederick Banting", "Stephen Harper", "Jean Chrétien"],
            "Russia": ["Yuri Gagarin", "Dmitri Mendeleev", "Ivan Pavlov", "Nikita Khrushchev", "Peter the Great",
                       "Mikhail Kalashnikov", "Valentina Tereshkova", "Dmitry Medvedev", "Sergey Lavrov",
                       "Grigori Rasputin", "Andrei Sakharov", "Alexei Navalny"],
            "Brazil": ["Ayrton Senna", "Gisele Bündchen", "Luiz Inácio Lula da Silva", "Jair Bolsonaro",
                       "Oscar Niemeyer", "Paulo Coelho", "Alberto Santos-Dumont", "Caetano Veloso", "Dilma Rousseff",
                       "Getúlio Vargas"],
            "Mexico": ["Frida Kahlo", "Diego Rivera", "Carlos Slim", "Guillermo del Toro", "Alfonso Cuarón",
                       "Benito Juárez", "Pancho Villa", "Emiliano Zapata", "Andrés Manuel López Obrador",
                       "Vicente Fox", "Alejandro González Iñárritu", "Cantinflas"],
            "Spain": ["Antonio Banderas", "Penélope Cruz", "Francisco Franco", "Pedro Almodóvar", "Fernando Alonso",
                      "Plácido Domingo", "Julio Iglesias", "Javier Bardem", "Francisco Goya", "Diego Velázquez",
                      "Pedro Sánchez", "Juan Carlos I"],
            "Egypt": ["Gamal Abdel Nasser", "Anwar Sadat", "Hosni Mubarak", "Naguib Mahfouz", "Omar Sharif",
                      "Umm Kulthum", "Tutankhamun", "Ramesses II", "Abdel Fattah el-Sisi",
                      "Boutros Boutros-Ghali"],
            "Greece": ["Socrates", "Plato", "Aristotle", "Pericles", "Hippocrates", "Nana Mouskouri", "Alexis Tsipras",
                       "Kyriakos Mitsotakis", "Nikos Kazantzakis", "Vangelis",
                       "Leonidas"],
            "Poland": ["Lech Wałęsa", "Pope John Paul II", "Andrzej Duda",
                       "Wisława Szymborska", "Stanisław Lem", "Henryk Sienkiewicz", "Józef Piłsudski",
                       "Krzysztof Kieślowski", "Andrzej Wajda"],
            "Sweden": ["Alfred Nobel", "Greta Thunberg", "Ingmar Bergman", "Carl Linnaeus", "Astrid Lindgren",
                       "Avicii", "Anders Celsius", "Dag Hammarskjöld", "Olof Palme", "Stieg Larsson"],
            "Norway": ["Roald Amundsen", "Edvard Munch", "Henrik Ibsen", "Edvard Grieg", "Magnus Carlsen",
                       "Fridtjof Nansen", "Jens Stoltenberg", "Knut Hamsun", "Liv Ullmann"],
            "Ireland": ["James Joyce", "Oscar Wilde", "Bono", "Samuel Beckett", "W. B. Yeats", "Conor McGregor",
                        "Enya", "Bram Stoker", "Sinéad O'Connor", "Michael D. Higgins",
                        "Leo Varadkar"],
            "Argentina": ["Eva Perón", "Juan Perón", "Pope Francis", "Javier Milei", "Juan Manuel Fangio",
                          "Astor Piazzolla", "Mauricio Macri", "Cristina Fernández de Kirchner", "Ernesto Sabato"],
            "Turkey": ["Mustafa Kemal Atatürk", "Recep Tayyip Erdoğan", "Orhan Pamuk", "İsmet İnönü", "Turgut Özal",
                       "Sezen Aksu", "Fatih Terim"],
            "South Africa": ["Nelson Mandela", "Desmond Tutu", "Jacob Zuma", "Cyril Ramaphosa", "F. W. de Klerk",
                             "Trevor Noah", "Steve Biko", "Thabo Mbeki", "Nadine Gordimer"],
        },
    ),
    Relation(
        "P131",  # country a region (state, province) belongs to
        "{} is a region in the country of",
        ["{} is part of the country of", "{} is an administrative region of the country of",
         "{} belongs to the country of"],
        ["The landscape of {} is", "Visitors to {} can"],
        {
            "Germany": ["Saxony", "Thuringia", "Baden-Württemberg", "Schleswig-Holstein",
                        "Rhineland-Palatinate", "Mecklenburg-Vorpommern", "Saarland", "North Rhine-Westphalia"],
            "France": ["Normandy", "Brittany", "Provence", "Burgundy", "Alsace", "Corsica", "Lorraine", "Auvergne",
                       "Aquitaine", "Occitanie", "Picardy", "Champagne", "Gascony", "Dordogne"],
            "Italy": ["Tuscany", "Sicily", "Sardinia", "Lombardy", "Veneto", "Liguria", "Calabria",
                      "Umbria", "Apulia", "Campania", "Lazio", "Emilia-Romagna", "Abruzzo", "Basilicata"],
            "Spain": ["Catalonia", "Andalusia", "Aragon", "Asturias", "Castile and León", "Murcia", "Extremadura",
                      "Navarre", "Cantabria", "the Canary Islands", "the Balearic Islands"],
            "Canada": ["Ontario", "Quebec", "Alberta", "British Columbia", "Manitoba", "Saskatchewan", "Nova Scotia",
                       "New Brunswick", "Newfoundland", "Prince Edward Island", "Nunavut"],
            "India": ["Kerala", "Rajasthan", "Gujarat", "Tamil Nadu", "Bihar", "Goa", "Assam", "Karnataka",
                      "Maharashtra", "Uttar Pradesh", "West Bengal", "Odisha", "Telangana", "Sikkim",
                      "Himachal Pradesh"],
            "China": ["Sichuan", "Yunnan", "Guangdong", "Hunan", "Hubei", "Fujian", "Zhejiang", "Shandong", "Jiangsu",
                      "Henan", "Guangxi", "Hainan", "Shaanxi", "Anhui"],
            "Japan": ["Hokkaido", "Kyushu", "Honshu", "Shikoku", "Okinawa Prefecture", "Kanto", "Kansai", "Tohoku",
                      "Chubu", "Chugoku"],
            "Mexico": ["Yucatán", "Chihuahua", "Jalisco", "Oaxaca", "Sonora", "Baja California", "Chiapas", "Sinaloa",
                       "Tabasco", "Michoacán"],
            "Russia": ["Tatarstan", "Dagestan", "Kamchatka", "Yakutia", "Bashkortostan", "Chukotka"],
        },
    ),
    Relation(
        "P17-landmark",  # country a landmark is in
        "{} is located in the country of",
        ["{} is a landmark in the country of", "{} can be found in the country of",
         "{} is a famous site in the country of"],
        ["The history of {} goes back to", "Travellers who see {}"],
        {
            "India": ["The Taj Mahal", "The Red Fort", "The Qutub Minar", "The Golden Temple", "The Hawa Mahal",
                      "The Ajanta Caves", "The Lotus Temple", "The Mysore Palace", "The Ellora Caves",
                      "The Meenakshi Temple", "The Amber Fort", "Fatehpur Sikri", "The Charminar"],
            "Egypt": ["The Great Sphinx", "Abu Simbel", "The Valley of the Kings", "The Karnak Temple", "Saqqara",
                      "The Temple of Philae", "The Great Pyramid", "The Step Pyramid of Djoser", "The Suez Canal",
                      "Mount Sinai", "The Temple of Hatshepsut"],
            "China": ["The Great Wall", "The Terracotta Army", "The Leshan Giant Buddha", "The Three Gorges Dam",
                      "The Mogao Caves", "The Bund", "The Li River", "The Yellow Mountains", "The Longmen Grottoes",
                      "The Shaolin Temple", "The West Lake", "Zhangjiajie"],
            "Peru": ["Machu Picchu", "The Nazca Lines", "Sacsayhuamán", "Chan Chan", "Ollantaytambo",
                     "The Colca Canyon",
                     "Huacachina", "Rainbow Mountain"],
            "Mexico": ["Chichen Itza", "Teotihuacan", "Palenque", "Tulum", "Monte Albán", "Uxmal", "Copper Canyon",
                       "Xochimilco", "Calakmul"],
            "Japan": ["Himeji Castle", "The Fushimi Inari Shrine", "Kinkaku-ji", "The Itsukushima Shrine", "Todai-ji",
                      "Senso-ji", "Mount Fuji", "The Meiji Shrine", "Nikko Tosho-gu", "Ginkaku-ji", "Kiyomizu-dera",
                      "The Great Buddha of Kamakura"],
            "Greece": ["Delphi", "Knossos", "Meteora", "Mycenae", "Mount Athos", "Epidaurus", "Mount Olympus",
                       "Mystras",
                       "Vergina"],
            "Turkey": ["Ephesus", "Cappadocia", "Pamukkale", "Göbekli Tepe", "Nemrut Dağ", "Mount Ararat",
                       "Sumela Monastery", "Aspendos"],
            "France": ["Mont Saint-Michel", "The Palace of Versailles", "The Château de Chambord", "The Lascaux caves",
                       "Carcassonne", "The Pont du Gard", "The Château de Chenonceau", "The Millau Viaduct",
                       "The Gorges du Verdon", "Rocamadour", "Chartres Cathedral"],
            "Italy": ["Pompeii", "The Amalfi Coast", "Mount Vesuvius", "Lake Como", "The Dolomites", "Cinque Terre",
                      "Mount Etna", "Herculaneum", "The Valley of the Temples"],
            "Germany": ["Neuschwanstein Castle", "Sanssouci", "Heidelberg Castle", "The Black Forest",
                        "Hohenzollern Castle", "The Wartburg", "Aachen Cathedral", "The Lorelei"],
            "England": ["Stonehenge", "Hadrian's Wall", "Blenheim Palace", "The White Cliffs of Dover",
                        "Canterbury Cathedral", "The Lake District", "Stratford-upon-Avon", "Salisbury Cathedral"],
        },
    ),
    Relation(
        "P30-river",  # continent a river flows on
        "{} is a river on the continent of",
        ["{} flows through the continent of", "{} is a major river on the continent of",
         "{} is one of the great rivers of the continent of"],
        ["The waters of {}", "Along the banks of {}"],
        {
            "Europe": ["The Danube", "The Rhine", "The Thames", "The Seine", "The Loire", "The Elbe", "The Volga",
                       "The Tiber", "The Po", "The Oder", "The Vistula", "The Rhône", "The Dnieper", "The Ebro",
                       "The Tagus", "The Douro", "The Shannon", "The Garonne", "The Meuse", "The Arno"],
            "Asia": ["The Yangtze", "The Ganges", "The Mekong", "The Indus", "The Brahmaputra", "The Yellow River",
                     "The Euphrates", "The Tigris", "The Amur", "The Ob", "The Yenisei", "The Lena", "The Irrawaddy",
                     "The Salween", "The Pearl River", "The Syr Darya", "The Amu Darya", "The Chao Phraya"],
            "Africa": ["The Nile", "The Zambezi", "The Limpopo", "The Orange River", "The Okavango", "The Volta",
                       "The Congo River", "The Blue Nile", "The White Nile", "The Kasai", "The Ubangi",
                       "The Shebelle"],
            "South America": ["The Amazon", "The Orinoco", "The Paraná", "The Magdalena", "The São Francisco",
                              "The Madeira", "The Rio Negro", "The Xingu", "The Tocantins", "The Purus", "The Japurá"],
            "North America": ["The Mississippi", "The Missouri", "The Hudson", "The Rio Grande", "The Yukon",
                              "The Columbia River", "The Colorado River", "The Ohio River", "The St. Lawrence River",
                              "The Mackenzie River", "The Snake River", "The Tennessee River", "The Arkansas River",
                              "The Delaware River", "The Potomac", "The Susquehanna"],
        },
    ),
    Relation(
        "P641-team",  # sport a professional team plays
        "{} play professional",
        ["{} are a team that plays professional", "{} are a professional team in the sport of",
         "{} compete in professional"],
        ["Fans of {} often", "Last season, {}"],
        {
            "basketball": ["The Los Angeles Lakers", "The Boston Celtics", "The Chicago Bulls", "The New York Knicks",
                           "The Houston Rockets", "The Phoenix Suns", "The Denver Nuggets", "The Toronto Raptors",
                           "The Golden State Warriors", "The Miami Heat", "The San Antonio Spurs",
                           "The Dallas Mavericks", "The Philadelphia 76ers", "The Detroit Pistons",
                           "The Cleveland Cavaliers", "The Milwaukee Bucks", "The Utah Jazz",
                           "The Portland Trail Blazers", "The Sacramento Kings", "The Brooklyn Nets",
                           "The Atlanta Hawks", "The Indiana Pacers", "The Orlando Magic", "The Memphis Grizzlies",
                           "The Minnesota Timberwolves", "The Oklahoma City Thunder", "The Charlotte Hornets",
                           "The Washington Wizards", "The New Orleans Pelicans", "The Los Angeles Clippers"],
            "baseball": ["The New York Yankees", "The Boston Red Sox", "The Los Angeles Dodgers", "The Chicago Cubs",
                         "The St. Louis Cardinals", "The New York Mets", "The Atlanta Braves", "The Seattle Mariners",
                         "The Houston Astros", "The San Francisco Giants", "The Chicago White Sox",
                         "The Oakland Athletics", "The Philadelphia Phillies", "The Detroit Tigers",
                         "The Cleveland Guardians", "The Baltimore Orioles", "The Toronto Blue Jays",
                         "The Texas Rangers", "The Kansas City Royals", "The Minnesota Twins", "The Cincinnati Reds",
                         "The Pittsburgh Pirates", "The Milwaukee Brewers", "The San Diego Padres",
                         "The Colorado Rockies", "The Tampa Bay Rays", "The Miami Marlins",
                         "The Arizona Diamondbacks", "The Washington Nationals", "The Los Angeles Angels"],
            "hockey": ["The Toronto Maple Leafs", "The Montreal Canadiens", "The Boston Bruins",
                       "The Detroit Red Wings",
                       "The Chicago Blackhawks", "The Edmonton Oilers", "The Pittsburgh Penguins",
                       "The Calgary Flames", "The New York Rangers", "The Philadelphia Flyers",
                       "The New York Islanders", "The New Jersey Devils", "The Los Angeles Kings",
                       "The Tampa Bay Lightning", "The Washington Capitals", "The St. Louis Blues",
                       "The Colorado Avalanche", "The Dallas Stars", "The Vegas Golden Knights", "The Minnesota Wild",
                       "The Anaheim Ducks", "The San Jose Sharks", "The Nashville Predators", "The Buffalo Sabres",
                       "The Carolina Hurricanes", "The Florida Panthers", "The Seattle Kraken",
                       "The Columbus Blue Jackets"],
            "football": ["The New England Patriots", "The Dallas Cowboys", "The Green Bay Packers",
                         "The Pittsburgh Steelers", "The San Francisco 49ers", "The Denver Broncos",
                         "The Miami Dolphins", "The Kansas City Chiefs", "The Chicago Bears", "The New York Giants",
                         "The Las Vegas Raiders", "The Seattle Seahawks", "The Philadelphia Eagles",
                         "The Baltimore Ravens", "The Minnesota Vikings", "The New Orleans Saints",
                         "The Buffalo Bills", "The Atlanta Falcons", "The Detroit Lions", "The Cleveland Browns",
                         "The Indianapolis Colts", "The Los Angeles Rams", "The Washington Commanders",
                         "The Carolina Panthers", "The Tampa Bay Buccaneers", "The Cincinnati Bengals",
                         "The Houston Texans", "The Jacksonville Jaguars", "The Tennessee Titans",
                         "The Arizona Cardinals", "The New York Jets", "The Los Angeles Chargers"],
        },
    ),
    Relation(
        "P1532",  # country a football club plays for
        "{} is a football club from the country of",
        ["{} is a soccer club from the country of", "{} is a football team based in the country of",
         "{} plays its home games in the country of"],
        ["Supporters of {}", "The stadium of {}"],
        {
            "England": ["Manchester United", "Manchester City", "Liverpool FC", "Arsenal FC", "Chelsea FC",
                        "Tottenham Hotspur", "Everton FC", "Aston Villa", "Newcastle United", "West Ham United",
                        "Leeds United", "Nottingham Forest", "Leicester City", "Wolverhampton Wanderers",
                        "Southampton FC", "Fulham FC", "Sunderland AFC"],
            "Spain": ["Real Madrid", "Atlético Madrid", "Sevilla FC", "Valencia CF", "Athletic Bilbao", "Real Betis",
                      "Villarreal CF", "Real Sociedad", "Celta Vigo", "Deportivo La Coruña", "RCD Espanyol"],
            "Italy": ["Juventus", "AC Milan", "Inter Milan", "AS Roma", "SSC Napoli", "ACF Fiorentina", "Atalanta BC",
                      "Torino FC", "Sampdoria", "Udinese"],
            "Germany": ["Borussia Dortmund", "Schalke 04", "Hamburger SV", "Eintracht Frankfurt",
                        "Borussia Mönchengladbach", "VfL Wolfsburg", "Hertha BSC", "1. FC Köln", "Union Berlin"],
            "Portugal": ["Benfica", "FC Porto", "Sporting CP", "Sporting Braga", "Boavista", "Vitória de Guimarães"],
            "Brazil": ["Flamengo", "Santos FC", "Corinthians", "Palmeiras", "Grêmio", "Fluminense", "Cruzeiro",
                       "Botafogo", "Sport Club Internacional"],
            "France": ["Olympique Lyonnais", "AS Saint-Étienne", "Stade Rennais", "OGC Nice", "RC Lens", "FC Lorient",
                       "Stade de Reims", "FC Metz"],
            "Scotland": ["Celtic FC", "Rangers FC", "Hibernian FC", "Heart of Midlothian", "Motherwell FC",
                         "Kilmarnock FC", "St Johnstone"],
            "Turkey": ["Galatasaray", "Fenerbahçe", "Beşiktaş", "Trabzonspor", "Bursaspor", "Göztepe"],
            "Argentina": ["Boca Juniors", "River Plate", "San Lorenzo de Almagro", "Newell's Old Boys",
                          "Rosario Central",
                          "Vélez Sarsfield", "Racing Club de Avellaneda"],
        },
    ),
    Relation(
        "P1080",  # mythology a deity belongs to
        "{} is a god in",
        ["{} is a deity in", "{} is worshipped as a god in", "{} is one of the gods of"],
        ["Legends about {} tell", "Ancient stories describe {} as"],
        {
            "Greek mythology": ["Zeus", "Hera", "Poseidon", "Athena", "Apollo", "Hermes", "Ares", "Aphrodite", "Hades",
                                "Dionysus", "Artemis", "Demeter", "Hephaestus", "Hestia", "Persephone", "Eros",
                                "Helios"],
            "Norse mythology": ["Thor", "Odin", "Loki", "Freya", "Baldur", "Heimdall", "Tyr", "Frigg", "Freyr",
                                "Njord", "Bragi", "Idun"],
            "Roman mythology": ["Jupiter", "Mars", "Minerva", "Juno", "Vulcan", "Janus", "Neptune", "Mercury",
                                "Ceres", "Bacchus", "Cupid", "Saturn"],
            "Egyptian mythology": ["Ra", "Osiris", "Anubis", "Horus", "Thoth", "Bastet", "Isis", "Ptah", "Amun",
                                   "Sekhmet", "Hathor"],
            "Hinduism": ["Vishnu", "Shiva", "Brahma", "Ganesha", "Krishna", "Hanuman", "Lakshmi", "Durga", "Kali",
                         "Indra", "Rama", "Saraswati", "Parvati"],
        },
    ),
    Relation(
        "P495-dish",  # country a dish comes from
        "{} is a dish from the country of",
        ["{} originated in the country of", "{} is a traditional dish from the country of",
         "{} is a famous food from the country of"],
        ["To prepare {}, you", "{} is usually served with"],
        {
            "Japan": ["Sushi", "Ramen", "Tempura", "Sashimi", "Miso soup", "Udon", "Teriyaki", "Onigiri",
                      "Okonomiyaki", "Takoyaki", "Sukiyaki", "Yakitori", "Tonkatsu", "Mochi"],
            "Italy": ["Pizza", "Lasagna", "Risotto", "Tiramisu", "Spaghetti carbonara", "Gelato", "Pesto", "Ravioli",
                      "Bruschetta", "Minestrone", "Focaccia", "Cannoli", "Panettone", "Osso buco", "Gnocchi"],
            "Mexico": ["Tacos", "Burritos", "Enchiladas", "Guacamole", "Quesadillas", "Tamales", "Mole poblano",
                       "Nachos", "Chiles en nogada", "Pozole", "Chilaquiles", "Tostadas", "Elote"],
            "India": ["Tandoori chicken", "Masala dosa", "Paneer tikka", "Chana masala",
                      "Butter chicken", "Dal makhani", "Vindaloo", "Idli", "Pani puri", "Palak paneer"],
            "France": ["Ratatouille", "Crêpes", "Coq au vin", "Bouillabaisse", "Escargots", "Cassoulet",
                       "Croque monsieur", "Beef bourguignon", "Soufflé", "Foie gras", "Tarte Tatin", "Baguette",
                       "Confit de canard"],
            "Spain": ["Paella", "Gazpacho", "Tortilla española", "Tapas", "Sangria", "Chorizo", "Jamón ibérico",
                      "Patatas bravas", "Pisto", "Fabada asturiana", "Crema catalana", "Pulpo a la gallega"],
            "China": ["Dim sum", "Peking duck", "Kung Pao chicken", "Mapo tofu", "Chow mein", "Wonton soup", "Hot pot",
                      "Char siu", "Xiaolongbao", "Sweet and sour pork", "Zongzi", "Jiaozi"],
            "Greece": ["Moussaka", "Souvlaki", "Tzatziki", "Gyros", "Spanakopita", "Feta cheese", "Taramasalata",
                       "Pastitsio", "Kleftiko"],
            "Thailand": ["Pad Thai", "Tom yum", "Green curry", "Massaman curry", "Tom kha gai",
                         "Pad kra pao", "Mango sticky rice", "Panang curry"],
            "Vietnam": ["Pho", "Banh mi", "Bun cha", "Goi cuon", "Cao lau", "Banh xeo", "Com tam"],
            "Russia": ["Pelmeni", "Beef Stroganoff", "Olivier salad", "Shchi", "Solyanka", "Kulebyaka", "Okroshka"],
            "Brazil": ["Feijoada", "Pão de queijo", "Brigadeiro", "Coxinha", "Moqueca", "Acarajé", "Caipirinha",
                       "Picanha"],
            "Peru": ["Ceviche", "Lomo saltado", "Anticuchos", "Causa limeña", "Ají de gallina",
                     "Papa a la huancaína", "Chicha morada"],
            "Germany": ["Bratwurst", "Currywurst", "Spätzle", "Sauerbraten", "Stollen", "Weisswurst",
                        "Schwarzwälder Kirschtorte"],
            "Hungary": ["Goulash", "Lángos", "Chicken paprikash", "Dobos torte", "Halászlé", "Lecsó"],
            "England": ["Fish and chips", "Yorkshire pudding", "Bangers and mash", "Toad in the hole", "Cornish pasty",
                        "Eton mess", "Sticky toffee pudding"],
        },
    ),
]


def relations_for(fact_set: str) -> list[Relation]:
    """The candidate relations of a fact set: ``default`` is RELATIONS itself; ``extended`` is RELATIONS
    with EXTRA_GROUPS appended to their groups (copies: RELATIONS is never modified), then EXTENDED_RELATIONS."""
    if fact_set == "default":
        return RELATIONS
    if fact_set != "extended":
        raise ValueError(f"unknown fact set {fact_set!r}; expected one of {FACT_SETS}")
    merged: list[Relation] = []
    for rel in RELATIONS:
        groups = {obj: list(subjects) for obj, subjects in rel.groups.items()}
        for obj, extra in EXTRA_GROUPS.get(rel.relation_id, {}).items():
            groups.setdefault(obj, []).extend(extra)
        merged.append(Relation(rel.relation_id, rel.template, list(rel.paraphrases), list(rel.generation), groups))
    unknown = set(EXTRA_GROUPS) - {rel.relation_id for rel in RELATIONS}
    if unknown:
        raise ValueError(f"EXTRA_GROUPS names relations that RELATIONS lacks: {sorted(unknown)}")
    relations = merged + EXTENDED_RELATIONS
    _validate(relations)
    return relations


def _validate(relations: list[Relation]) -> None:
    """Relation ids and main templates are distinct, and no subject is listed twice within a relation."""
    ids = Counter(rel.relation_id for rel in relations)
    templates = Counter(rel.template for rel in relations)
    problems = [f"relation id {i!r} used {n} times" for i, n in ids.items() if n > 1]
    problems += [f"template {t!r} used {n} times" for t, n in templates.items() if n > 1]
    for rel in relations:
        subjects = Counter(s for group in rel.groups.values() for s in group)
        problems += [f"{rel.relation_id}: subject {s!r} listed {n} times" for s, n in subjects.items() if n > 1]
    if problems:
        raise ValueError("bad candidate relations: " + "; ".join(problems))


# --- scoring ----------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """The model's greedy answer to one prompt, and whether it is the first token of the target."""

    predicted: str
    correct: bool
    margin: float  # logit of the target's first token minus the best other logit (> 0 iff correct)


def score_prompts(model, prompts: dict[str, str], batch_size: int = 64) -> dict[str, Verdict]:
    """Greedy next token for each ``prompt -> target`` (BOS prepended, as knowscope scores facts).

    Prompts are sorted by token length so that batches hold little padding; the verdict of each
    prompt does not depend on its batch (causal attention, right padding).
    """
    import torch

    order = sorted(prompts, key=lambda p: (len(model.tokenizer.encode(p, add_special_tokens=False)), p))
    out: dict[str, Verdict] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        logits = model.last_logits(chunk, batch_size=batch_size)
        for prompt, row in zip(chunk, logits, strict=True):
            target_id = model.encode_target(" " + prompts[prompt])[0]
            top = int(row.argmax())
            others = row.clone()
            others[target_id] = -torch.inf
            out[prompt] = Verdict(
                predicted=model.tokenizer.decode([top]),
                correct=top == target_id,
                margin=float(row[target_id] - others.max()),
            )
        log.info("scored %d/%d prompts", min(start + batch_size, len(order)), len(order))
    return out


# --- building ---------------------------------------------------------------------------------------


def _mentions(text: str, target: str) -> bool:
    return target.lower() in text.lower()


def candidate_prompts(relations: list[Relation]) -> dict[str, str]:
    """The main-template prompt of every candidate subject -> its true object (what selection needs)."""
    prompts: dict[str, str] = {}
    for rel in relations:
        for obj, subjects in rel.groups.items():
            for subject in subjects:
                prompts[rel.template.format(subject)] = obj
    return prompts


def _first_token(model, target: str) -> int:
    return model.encode_target(" " + target)[0]


def _counterfactual(model, rel: Relation, obj: str, index: int) -> str:
    """A deterministic counterfactual object: another object of the relation, cycling with ``index``,
    whose first token differs from the true object's first token (so the edit target is unambiguous)."""
    others = [o for o in rel.groups if o != obj and _first_token(model, o) != _first_token(model, obj)]
    if not others:
        raise ValueError(f"relation {rel.relation_id}: no counterfactual object for {obj!r}")
    return others[index % len(others)]


def _names(text: str, subject: str) -> bool:
    """Does ``text`` name ``subject`` as a whole word or phrase (ignoring case)? The word-boundary rule of
    knowscope.editing.evaluate, which drops the neighbourhood prompts that name an edited subject."""
    if subject.lower() not in text.lower():
        return False
    return re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", text, flags=re.IGNORECASE) is not None


def _known_facts(model, rel: Relation, verdicts: dict[str, Verdict], min_margin: float) -> dict[str, list]:
    """Per object of ``rel``, the facts the model knows, in candidate order, each as ``(fact, neighbours)``:
    ``neighbours`` is every neighbourhood prompt in preference order (``fact`` holds the first ``MAX_NEIGHBORS``)."""
    from knowscope.facts import Fact

    per_object: dict[str, list] = {}
    for obj, subjects in rel.groups.items():
        kept = []
        for index, subject in enumerate(subjects):
            text = rel.template.format(subject)
            verdict = verdicts[text]
            paraphrases = [t.format(subject) for t in rel.paraphrases]
            if not verdict.correct or verdict.margin < min_margin:
                continue
            if any(_mentions(p, obj) for p in [text, *paraphrases]):
                continue
            neighbours = [
                rel.template.format(s) for s in subjects
                if s != subject and not _mentions(rel.template.format(s), obj) and subject not in s
            ]
            # neighbours the model answers correctly first (stable: candidate order within each part)
            neighbours.sort(key=lambda p: not verdicts[p].correct)
            if len(neighbours) < MIN_NEIGHBORS:
                continue
            fact = Fact(
                subject=subject,
                prompt=rel.template,
                target_true=obj,
                target_new=_counterfactual(model, rel, obj, index),
                relation_id=rel.relation_id,
                paraphrase_prompts=paraphrases,
                neighborhood_prompts=neighbours[:MAX_NEIGHBORS],
                generation_prompts=[t.format(subject) for t in rel.generation],
            )
            kept.append((fact, neighbours))
        per_object[obj] = kept
    return per_object


def _without_names(per_object: dict[str, list], subjects: list[str]) -> dict[str, list]:
    """``per_object`` with every neighbourhood prompt that names one of ``subjects`` removed (re-cut to
    ``MAX_NEIGHBORS``); a fact left with fewer than ``MIN_NEIGHBORS`` is removed."""
    out: dict[str, list] = {}
    for obj, kept in per_object.items():
        out[obj] = []
        for fact, neighbours in kept:
            clean = [p for p in neighbours if not any(_names(p, s) for s in subjects)]
            if len(clean) < MIN_NEIGHBORS:
                log.info("%s: skipping %r (fewer than %d neighbourhood prompts name no subject of another relation)",
                         fact.relation_id, fact.subject, MIN_NEIGHBORS)
                continue
            fact.neighborhood_prompts = clean[:MAX_NEIGHBORS]
            out[obj].append((fact, clean))
    return out


def select_facts(model, relations: list[Relation], verdicts: dict[str, Verdict], min_margin: float,
                 max_per_relation: int = MAX_FACTS_PER_RELATION, unique_subjects: bool = False) -> list:
    """The facts the model knows, with paraphrases and (preferably correctly answered) neighbourhood prompts.

    Per relation, known facts are taken round-robin over the objects (so no object dominates), up to
    ``max_per_relation``. A fact is kept when its prompt's greedy token is the target's first
    token with a logit margin of at least ``min_margin`` (so the verdict does not flip with batching
    or device), the target does not occur in any of its prompts, and at least ``MIN_NEIGHBORS``
    other subjects share its object.

    With ``unique_subjects`` (the extended set), relations are served in order, earlier ones first, and
    no prompt of a fact names the subject of a fact of another relation: a candidate is skipped when its
    subject is, names or is named by a subject already chosen, or when a neighbourhood prompt of a fact
    chosen for an earlier relation names it; and a candidate's neighbourhood prompts that name a subject
    chosen for an earlier relation are removed (the candidate is skipped if fewer than ``MIN_NEIGHBORS``
    remain). Sequential-editing evaluation drops every neighbourhood prompt that names an edited subject,
    so such prompts would be lost anyway once that subject is edited.
    """
    facts: list = []
    taken: list[str] = []  # subjects chosen so far, all relations (unique_subjects only)
    stored: list[str] = []  # neighbourhood prompts of the facts of earlier relations (unique_subjects only)
    for rel in relations:
        per_object = _known_facts(model, rel, verdicts, min_margin)
        if unique_subjects:
            per_object = _without_names(per_object, taken)
        chosen: list = []
        while len(chosen) < max_per_relation and any(per_object.values()):
            for obj in rel.groups:
                while unique_subjects and per_object[obj] and _blocked(per_object[obj][0][0].subject, taken, stored):
                    log.info("%s: skipping %r (another fact's subject or neighbourhood prompt names it, or it "
                             "names another fact's subject)", rel.relation_id, per_object[obj][0][0].subject)
                    per_object[obj].pop(0)
                if per_object[obj] and len(chosen) < max_per_relation:
                    chosen.append(per_object[obj].pop(0)[0])
                    taken.append(chosen[-1].subject)
        chosen.sort(key=lambda f: (list(rel.groups).index(f.target_true), rel.groups[f.target_true].index(f.subject)))
        facts.extend(chosen)
        stored.extend(p for f in chosen for p in f.neighborhood_prompts)
    for case_id, fact in enumerate(facts):
        fact.case_id = case_id
    return facts


def _blocked(subject: str, taken: list[str], stored: list[str]) -> bool:
    """May ``subject`` not be chosen: is it, does it name, or is it named by a chosen subject, or does a stored
    neighbourhood prompt name it?"""
    return (any(_names(subject, other) or _names(other, subject) for other in taken)
            or any(_names(prompt, subject) for prompt in stored))


def summarize(model, facts: list, verdicts: dict[str, Verdict] | None = None) -> dict:
    """Counts and the model's accuracy on the facts' prompts, paraphrases and neighbourhood prompts."""
    verdicts = dict(verdicts or {})
    missing: dict[str, str] = {}
    for f in facts:
        for p in [f.text, *f.paraphrase_prompts, *f.neighborhood_prompts]:
            if p not in verdicts:
                missing[p] = f.target_true
    verdicts.update(score_prompts(model, missing) if missing else {})
    para = [verdicts[p].correct for f in facts for p in f.paraphrase_prompts]
    neigh = [verdicts[p].correct for f in facts for p in f.neighborhood_prompts]
    lengths = Counter(len(model.encode_target(" " + f.subject)) for f in facts)
    return {
        "n_facts": len(facts),
        "relations": dict(Counter(f.relation_id for f in facts)),
        "objects": len({(f.relation_id, f.target_true) for f in facts}),
        "top1": sum(verdicts[f.text].correct for f in facts) / max(len(facts), 1),
        "paraphrase_accuracy": sum(para) / max(len(para), 1),
        "n_paraphrases": len(para),
        "neighborhood_accuracy": sum(neigh) / max(len(neigh), 1),
        "n_neighborhood": len(neigh),
        "subject_token_lengths": dict(sorted(lengths.items())),
    }


def build(out: Path, min_margin: float, fact_set: str = "default") -> int:
    from knowscope.facts import save_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    model = load_model(device="cpu")
    relations = relations_for(fact_set)
    candidates = candidate_prompts(relations)
    verdicts = score_prompts(model, candidates)
    if fact_set == "default":
        facts = select_facts(model, relations, verdicts, min_margin)
    else:
        facts = select_facts(model, relations, verdicts, min_margin,
                             max_per_relation=MAX_FACTS_PER_RELATION_EXTENDED, unique_subjects=True)
    # Re-check with exactly the function the integration test and --check use.
    report = fact_accuracy(model, facts)
    wrong = [r["case_id"] for r in report.rows if not r["correct"]]
    if wrong:
        log.warning("dropping %d facts that fact_accuracy scores wrong: %s", len(wrong), wrong)
        facts = [f for f in facts if f.case_id not in set(wrong)]
        for case_id, fact in enumerate(facts):
            fact.case_id = case_id
    save_facts(facts, out)
    stats = summarize(model, facts, verdicts)
    print(json.dumps(stats, indent=1))
    print(f"tried {len(candidates)} candidate facts over {len(relations)} relations ({fact_set} set)")
    print(f"wrote {len(facts)} facts to {out}")
    return 0


def check(path: Path) -> int:
    from knowscope.facts import load_facts
    from knowscope.knowledge import fact_accuracy
    from knowscope.models import load_model

    facts = load_facts(path)
    model = load_model(device="cpu")
    report = fact_accuracy(model, facts)
    wrong = [r for r in report.rows if not r["correct"]]
    print(json.dumps(summarize(model, facts), indent=1))
    for r in wrong:
        print(f"NOT KNOWN: case {r['case_id']}: {r['prompt']!r} -> {r['predicted']!r}, expected {r['target_true']!r}")
    print(f"top-1 accuracy {report.accuracy:.3f} on {len(facts)} facts from {path}")
    return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="fact_set", choices=FACT_SETS, default="default",
                        help="which fact set: default (facts.json) or extended (facts_extended.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (with --check: the file to check); default: the set's bundled file")
    parser.add_argument("--check", action="store_true",
                        help="re-verify an existing file; exit 1 if any fact is not known")
    parser.add_argument("--min-margin", type=float, default=0.1,
                        help="keep a fact only if its target's logit beats the runner-up by this much")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.min_margin < 0:
        raise SystemExit(f"--min-margin must be >= 0, got {args.min_margin}")
    out = args.out if args.out is not None else (DEFAULT_OUT if args.fact_set == "default" else EXTENDED_OUT)
    if args.check:
        if not out.is_file():
            raise SystemExit(f"no fact file at {out}")
        return check(out)
    return build(out, args.min_margin, args.fact_set)


if __name__ == "__main__":
    sys.exit(main())
