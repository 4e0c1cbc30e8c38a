"""Hand-written tables of true real-world facts for ``scripts/build_probes.py``: places and portability hops.

``PROBE_RELATIONS`` (this file, places), ``probe_knowledge_people.people_relations()`` (people, deities)
and ``probe_knowledge_sites.site_relations()`` (landmarks, sports teams) are relations of their own, each a
many-to-one :class:`fact_candidates.Relation` (one fixed template, paraphrases, generation prompts,
``answer -> subjects`` groups). A subject listed under two answers has two true answers (synonyms, or a
landmark among several in a city); a probe keeps whichever the default model answers. ``CANDIDATE_EXTRAS_*``
add subjects to the candidate relations of ``fact_candidates*.py`` (same template, so the probe keeps the
candidate's relation id), and ``CANDIDATE_EXCLUDED`` drops candidate rows that are no longer true (the
fact sets built from them keep them, but no probe or neighbourhood prompt uses them).

Which relations may probe which edit (``DEPENDENT``) and the one-hop chains for portability (``CHAINS``,
``HOPS``) are defined at the end of this file.
"""

from __future__ import annotations

from fact_candidates import Relation


def groups(table: dict[str, str | tuple[str, ...]]) -> dict[str, list[str]]:
    """``subject -> answer or answers`` as ``answer -> subjects`` (insertion order kept)."""
    out: dict[str, list[str]] = {}
    for subject, answers in table.items():
        for answer in (answers,) if isinstance(answers, str) else answers:
            out.setdefault(answer, []).append(subject)
    return out


def spread(table: dict[str | tuple[str, ...], list[str]]) -> dict[str, list[str]]:
    """``answer (or synonyms) -> subjects`` with every synonym getting the subjects."""
    out: dict[str, list[str]] = {}
    for answers, subjects in table.items():
        for answer in (answers,) if isinstance(answers, str) else answers:
            out.setdefault(answer, []).extend(subjects)
    return out


# --- countries ----------------------------------------------------------------------------------------

CAPITALS = {
    "Mexico": "Mexico City", "Argentina": "Buenos Aires", "Peru": "Lima", "Colombia": "Bogotá", "Chile": "Santiago",
    "Spain": "Madrid", "Venezuela": "Caracas", "Cuba": "Havana", "Ecuador": "Quito", "Uruguay": "Montevideo",
    "Paraguay": "Asunción", "Honduras": "Tegucigalpa", "Nicaragua": "Managua", "Costa Rica": "San José",
    "Panama": "Panama City", "El Salvador": "San Salvador", "the Dominican Republic": "Santo Domingo",
    "Guatemala": "Guatemala City", "Bolivia": ("Sucre", "La Paz"), "Brazil": "Brasília", "Portugal": "Lisbon",
    "Angola": "Luanda", "Mozambique": "Maputo", "Cape Verde": "Praia", "France": "Paris", "Senegal": "Dakar",
    "Ivory Coast": "Yamoussoukro", "Gabon": "Libreville", "Benin": "Porto-Novo", "Togo": "Lomé",
    "Guinea": "Conakry", "Egypt": "Cairo", "Saudi Arabia": "Riyadh", "Jordan": "Amman", "Iraq": "Baghdad",
    "Syria": "Damascus", "Lebanon": "Beirut", "Libya": "Tripoli", "Yemen": ("Sanaa", "Sana'a"), "Oman": "Muscat",
    "Kuwait": "Kuwait City", "Qatar": "Doha", "Bahrain": "Manama", "Algeria": "Algiers", "Morocco": "Rabat",
    "Tunisia": "Tunis", "Sudan": "Khartoum", "the United Arab Emirates": "Abu Dhabi", "Australia": "Canberra",
    "New Zealand": "Wellington", "the United Kingdom": "London", "the United States": "Washington",
    "Jamaica": "Kingston", "Nigeria": "Abuja", "Ghana": "Accra", "Liberia": "Monrovia", "Germany": "Berlin",
    "Austria": "Vienna", "Russia": "Moscow", "Belarus": "Minsk", "Italy": "Rome", "Poland": "Warsaw",
    "Sweden": "Stockholm", "Norway": "Oslo", "Belgium": "Brussels", "Greece": "Athens", "Hungary": "Budapest",
    "Denmark": "Copenhagen", "Finland": "Helsinki", "the Netherlands": "Amsterdam", "Switzerland": "Bern",
    "Ireland": "Dublin", "Iceland": "Reykjavik", "Croatia": "Zagreb", "Serbia": "Belgrade", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "the Czech Republic": "Prague", "Slovakia": "Bratislava", "Slovenia": "Ljubljana",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "Albania": "Tirana", "Malta": "Valletta",
    "Bosnia and Herzegovina": "Sarajevo", "North Macedonia": "Skopje", "Montenegro": "Podgorica",
    "Moldova": ("Chișinău", "Chisinau"), "Ukraine": ("Kyiv", "Kiev"), "China": "Beijing", "Japan": "Tokyo",
    "India": "New Delhi", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "Mongolia": "Ulaanbaatar", "Nepal": "Kathmandu", "Cambodia": "Phnom Penh", "Laos": "Vientiane",
    "Malaysia": "Kuala Lumpur", "the Philippines": "Manila", "South Korea": "Seoul", "North Korea": "Pyongyang",
    "Bangladesh": "Dhaka", "Pakistan": "Islamabad", "Iran": "Tehran", "Afghanistan": "Kabul",
    "Myanmar": ("Naypyidaw", "Nay Pyi Taw"), "Bhutan": "Thimphu", "Uzbekistan": "Tashkent",
    "Brunei": "Bandar Seri Begawan", "Kyrgyzstan": "Bishkek", "Tajikistan": "Dushanbe",
    "Turkmenistan": "Ashgabat", "the Maldives": "Malé", "Sri Lanka": "Sri Jayawardenepura Kotte",
    "Kenya": "Nairobi", "Ethiopia": "Addis Ababa", "Tanzania": "Dodoma", "Uganda": "Kampala",
    "Zimbabwe": "Harare", "Cameroon": "Yaoundé", "Mali": "Bamako", "Somalia": "Mogadishu", "Zambia": "Lusaka",
    "Botswana": "Gaborone", "Namibia": "Windhoek", "Rwanda": "Kigali", "Madagascar": "Antananarivo",
    "Malawi": "Lilongwe", "Chad": "N'Djamena", "Eritrea": "Asmara", "Mauritius": "Port Louis",
    "Sierra Leone": "Freetown", "South Sudan": "Juba", "the Central African Republic": "Bangui",
    "Canada": "Ottawa", "Haiti": "Port-au-Prince", "Belize": "Belmopan", "Grenada": "St. George's",
    "Saint Lucia": "Castries", "Dominica": "Roseau", "Turkey": "Ankara", "Guyana": "Georgetown",
    "Suriname": "Paramaribo", "Cyprus": "Nicosia",
}

# the biggest city where it is not the capital (countries and regions; left out where sources disagree)
LARGEST_CITIES = {
    "Australia": "Sydney", "Turkey": "Istanbul", "Brazil": "São Paulo", "Canada": "Toronto",
    "India": ("Mumbai", "Delhi"), "China": "Shanghai", "Nigeria": "Lagos", "Morocco": "Casablanca",
    "Switzerland": "Zurich", "the United States": "New York", "Pakistan": "Karachi",
    "Vietnam": "Ho Chi Minh City", "South Africa": "Johannesburg", "New Zealand": "Auckland",
    "Ecuador": "Guayaquil", "Bolivia": "Santa Cruz", "Tanzania": "Dar es Salaam", "Cameroon": "Douala",
    "Ivory Coast": "Abidjan", "Benin": "Cotonou", "Myanmar": "Yangon", "the United Arab Emirates": "Dubai",
    "Scotland": "Glasgow", "Belize": "Belize City", "Sri Lanka": "Colombo", "Kazakhstan": "Almaty",
    "Saskatchewan": "Saskatoon", "Baja California": "Tijuana", "Chihuahua": "Ciudad Juárez",
    "North Rhine-Westphalia": "Cologne", "Calabria": "Reggio Calabria", "Abruzzo": "Pescara",
    "Mecklenburg-Vorpommern": "Rostock", "Alberta": "Calgary", "British Columbia": "Vancouver",
    "Quebec": "Montreal", "Champagne": "Reims", "Kyushu": "Fukuoka", "Honshu": "Tokyo", "Shikoku": "Matsuyama",
    "Kanto": "Tokyo", "Kansai": "Osaka", "Tohoku": "Sendai", "Chugoku": "Hiroshima", "Chubu": "Nagoya",
}

EURO = ("euro", "Euro")
CURRENCIES = spread({
    EURO: ["France", "Germany", "Italy", "Spain", "Portugal", "Austria", "Belgium", "Greece", "Finland",
           "the Netherlands", "Ireland", "Luxembourg", "Malta", "Slovakia", "Slovenia", "Estonia", "Latvia",
           "Lithuania", "Croatia", "Monaco", "Montenegro", "Cyprus"],
    ("peso",): ["Mexico", "Argentina", "Colombia", "Chile", "Cuba", "Uruguay", "the Dominican Republic",
                "the Philippines"],
    ("dollar",): ["the United States", "Canada", "Australia", "New Zealand", "Jamaica", "Liberia", "Namibia",
                  "the Bahamas", "Barbados", "Guyana", "Belize", "Ecuador", "El Salvador"],
    ("US dollar",): ["Ecuador", "El Salvador"],
    ("pound", "pound sterling"): ["the United Kingdom"],
    ("pound",): ["Egypt", "Lebanon", "Syria", "Sudan", "South Sudan"],
    ("dinar",): ["Jordan", "Iraq", "Kuwait", "Bahrain", "Libya", "Algeria", "Tunisia", "Serbia"],
    ("riyal",): ["Saudi Arabia", "Qatar"], ("rial",): ["Oman", "Yemen", "Iran"],
    ("dirham",): ["Morocco", "the United Arab Emirates"],
    ("rupee",): ["India", "Pakistan", "Nepal", "Sri Lanka", "Mauritius"],
    ("shilling",): ["Kenya", "Tanzania", "Uganda", "Somalia"],
    ("franc",): ["Switzerland", "Liechtenstein", "Rwanda", "Burundi", "Guinea"],
    ("Swiss franc",): ["Switzerland", "Liechtenstein"],
    ("CFA franc", "franc"): ["Senegal", "Ivory Coast", "Mali", "Niger", "Burkina Faso", "Benin", "Togo",
                             "Cameroon", "Gabon", "Chad", "the Central African Republic",
                             "the Republic of the Congo"],
    ("krona",): ["Sweden"], ("krone",): ["Norway", "Denmark"], ("króna", "krona"): ["Iceland"],
    ("yen",): ["Japan"], ("yuan", "renminbi"): ["China"], ("won",): ["South Korea", "North Korea"],
    ("ruble", "rouble"): ["Russia", "Belarus"], ("lira",): ["Turkey"], ("real",): ["Brazil"],
    ("sol",): ["Peru"], ("bolívar",): ["Venezuela"], ("guaraní",): ["Paraguay"], ("lempira",): ["Honduras"],
    ("córdoba",): ["Nicaragua"], ("colón",): ["Costa Rica"], ("quetzal",): ["Guatemala"], ("boliviano",): ["Bolivia"],
    ("zloty", "złoty"): ["Poland"], ("forint",): ["Hungary"], ("koruna", "crown"): ["the Czech Republic"],
    ("leu",): ["Romania", "Moldova"], ("lek",): ["Albania"], ("denar",): ["North Macedonia"],
    ("hryvnia",): ["Ukraine"], ("mark", "convertible mark"): ["Bosnia and Herzegovina"], ("rand",): ["South Africa"],
    ("naira",): ["Nigeria"], ("cedi",): ["Ghana"], ("pula",): ["Botswana"], ("kwacha",): ["Zambia", "Malawi"],
    ("birr",): ["Ethiopia"], ("ariary",): ["Madagascar"], ("leone",): ["Sierra Leone"], ("metical",): ["Mozambique"],
    ("kwanza",): ["Angola"], ("baht",): ["Thailand"], ("dong",): ["Vietnam"], ("rupiah",): ["Indonesia"],
    ("ringgit",): ["Malaysia"], ("kyat",): ["Myanmar"], ("taka",): ["Bangladesh"], ("riel",): ["Cambodia"],
    ("kip",): ["Laos"], ("afghani",): ["Afghanistan"], ("shekel",): ["Israel"], ("ngultrum",): ["Bhutan"],
})

# --- cities -------------------------------------------------------------------------------------------

LANDMARKS = {  # city -> famous landmarks, as named after "the" (P276's landmarks are added by the build)
    "Tokyo": ("Tokyo Tower", "Tokyo Skytree", "Imperial Palace", "Meiji Shrine"),
    "Kyoto": ("Golden Pavilion", "Fushimi Inari Shrine", "Silver Pavilion", "Imperial Palace"),
    "Yokohama": ("Landmark Tower",), "Nagoya": ("Nagoya Castle", "Atsuta Shrine"),
    "Marseille": ("Old Port", "Château d'If", "Notre-Dame de la Garde"), "Toulouse": ("Capitole",),
    "Bordeaux": ("Place de la Bourse",), "Munich": ("Frauenkirche", "Nymphenburg Palace", "English Garden",
                                                   "Allianz Arena"),
    "Hamburg": ("Elbphilharmonie", "Speicherstadt"), "Cologne": ("Cologne Cathedral", "Hohenzollern Bridge"),
    "Stuttgart": ("Mercedes-Benz Museum", "Porsche Museum"), "Bologna": ("Two Towers", "Basilica of San Petronio"),
    "Genoa": ("Lanterna",), "Pisa": ("Leaning Tower", "Leaning Tower of Pisa"),
    "Seville": ("Alcázar", "Giralda", "Seville Cathedral"), "Málaga": ("Alcazaba", "Picasso Museum"),
    "Shanghai": ("Bund", "Oriental Pearl Tower", "Yu Garden", "Shanghai Tower"), "Guangzhou": ("Canton Tower",),
    "Mumbai": ("Gateway of India", "Taj Mahal Palace", "Chhatrapati Shivaji Terminus"),
    "Pune": ("Shaniwar Wada", "Aga Khan Palace"), "Kazan": ("Kazan Kremlin", "Kremlin", "Kul Sharif Mosque"),
    "Vladivostok": ("Golden Bridge", "Russky Bridge"), "Vancouver": ("Lions Gate Bridge", "Stanley Park Seawall"),
    "Ottawa": ("Rideau Canal", "Peace Tower"), "Winnipeg": ("Canadian Museum for Human Rights",),
    "Brisbane": ("Story Bridge",), "Canberra": ("Parliament House", "Australian War Memorial"),
    "Rio de Janeiro": ("Christ the Redeemer", "Sugarloaf Mountain", "Maracanã"),
    "Brasília": ("Cathedral of Brasília", "National Congress"), "Ankara": ("Anıtkabir", "Atatürk Mausoleum"),
    "Izmir": ("Clock Tower",), "Cairo": ("Egyptian Museum", "Citadel", "Al-Azhar Mosque"),
    "Warsaw": ("Palace of Culture and Science", "Royal Castle"), "Kraków": ("Wawel Castle", "Cloth Hall"),
    "Lahore": ("Badshahi Mosque", "Lahore Fort", "Shalimar Gardens"), "Karachi": ("Mazar-e-Quaid",),
    "Tehran": ("Azadi Tower", "Milad Tower", "Golestan Palace"), "Isfahan": ("Naqsh-e Jahan Square", "Shah Mosque"),
    "Shiraz": ("Tomb of Hafez",), "Jakarta": ("National Monument", "Istiqlal Mosque"),
    "Bangkok": ("Grand Palace", "Temple of the Emerald Buddha", "Temple of Dawn"),
    "Pattaya": ("Sanctuary of Truth",), "Da Nang": ("Golden Bridge", "Dragon Bridge", "Marble Mountains"),
    "Thessaloniki": ("White Tower", "Rotunda", "Arch of Galerius"), "Rabat": ("Hassan Tower", "Kasbah of the Udayas"),
    "Fez": ("University of al-Qarawiyyin",), "Cape Town": ("V&A Waterfront", "Castle of Good Hope"),
    "Durban": ("Moses Mabhida Stadium",), "Malmö": ("Turning Torso",), "Innsbruck": ("Golden Roof",),
    "Buenos Aires": ("Obelisk", "Casa Rosada", "Teatro Colón"),
    "Dublin": ("Guinness Storehouse", "Spire", "Ha'penny Bridge"), "Cork": ("English Market",),
    "Limerick": ("King John's Castle",), "Edinburgh": ("Royal Mile", "Scott Monument", "Edinburgh Castle"),
    "Glasgow": ("Kelvingrove Art Gallery", "Riverside Museum"), "Bristol": ("Clifton Suspension Bridge",),
    "Aberdeen": ("Marischal College",),
}

RIVERS = spread({  # river -> cities on it
    "Seine": ["Paris", "Rouen"], "Garonne": ["Toulouse", "Bordeaux"], "Loire": ["Nantes", "Orléans", "Tours"],
    "Rhône": ["Lyon", "Geneva", "Avignon"],
    "Rhine": ["Cologne", "Basel", "Düsseldorf", "Strasbourg", "Bonn", "Mainz"], "Isar": ["Munich"],
    "Elbe": ["Hamburg", "Dresden", "Magdeburg"], "Neckar": ["Stuttgart", "Heidelberg"], "Main": ["Frankfurt"],
    "Weser": ["Bremen"], "Spree": ["Berlin"], "Tiber": ["Rome"], "Arno": ["Florence", "Pisa"], "Po": ["Turin"],
    "Adige": ["Verona"], "Guadalquivir": ["Seville", "Córdoba"], "Ebro": ["Zaragoza"],
    "Tagus": ["Lisbon", "Toledo"], "Douro": ["Porto"],
    "Thames": ["London", "Oxford", "Reading"], "Avon": ["Bristol", "Bath"], "Exe": ["Exeter"], "Don": ["Sheffield"],
    "Clyde": ["Glasgow"], "Liffey": ["Dublin"], "Lee": ["Cork"], "Shannon": ["Limerick"],
    "Moskva": ["Moscow"], "Neva": ["Saint Petersburg"],
    "Volga": ["Kazan", "Samara", "Nizhny Novgorod", "Volgograd", "Yaroslavl", "Astrakhan"],
    "Ob": ["Novosibirsk"], "Irtysh": ["Omsk"], "Vistula": ["Warsaw", "Kraków"], "Oder": ["Wrocław"],
    "Danube": ["Vienna", "Budapest", "Belgrade", "Bratislava", "Linz", "Ulm", "Regensburg"], "Inn": ["Innsbruck"],
    "Salzach": ["Salzburg"], "Nile": ["Cairo", "Luxor", "Aswan", "Khartoum"], "Tigris": ["Baghdad", "Mosul"],
    "Yangtze": ["Wuhan", "Chongqing", "Nanjing"], "Huangpu": ["Shanghai"], "Pearl River": ["Guangzhou"],
    "Yellow River": ["Lanzhou"], "Ganges": ["Varanasi"], "Hooghly": ["Kolkata"], "Yamuna": ["Delhi", "Agra"],
    "Ravi": ["Lahore"], "Chao Phraya": ["Bangkok"], "Mekong": ["Phnom Penh", "Vientiane"], "Red River": ["Hanoi"],
    "Han River": ["Seoul"], "Sumida": ["Tokyo"], "Kamo": ["Kyoto"],
    "Río de la Plata": ["Buenos Aires"], "St. Lawrence": ["Montreal", "Quebec City"], "Ottawa River": ["Ottawa"],
    "Brisbane River": ["Brisbane"], "Derwent": ["Hobart"], "Swan River": ["Perth"], "Yarra": ["Melbourne"],
    "Hudson": ["New York"], "Potomac": ["Washington"], "Mississippi": ["St. Louis", "New Orleans", "Memphis",
                                                                     "Minneapolis", "Baton Rouge"],
})

COASTS = spread({  # sea -> cities and regions on its coast
    "Mediterranean": ["Marseille", "Genoa", "Barcelona", "Málaga", "Alexandria", "Valencia", "Nice", "Naples",
                      "Palermo", "Beirut", "Tel Aviv", "Algiers", "Tunis", "Tripoli", "Tuscany", "Liguria",
                      "Calabria", "Lazio", "Andalusia", "Provence", "Catalonia", "Sicily", "Sardinia", "Corsica"],
    "Ligurian Sea": ["Genoa", "Liguria"], "Tyrrhenian Sea": ["Naples", "Lazio", "Calabria", "Tuscany"],
    "Ionian Sea": ["Calabria"], "Aegean": ["Izmir", "Thessaloniki"],
    "Adriatic": ["Venice", "Trieste", "Bari", "Split", "Dubrovnik", "Emilia-Romagna", "Abruzzo"],
    "Atlantic": ["Rio de Janeiro", "Cape Town", "Rabat", "Casablanca", "Lisbon", "Lagos", "Dakar", "Accra", "Cork",
                 "Aquitaine", "Gascony", "Nova Scotia", "Newfoundland", "Andalusia", "Salvador", "Recife"],
    "Pacific": ["Vancouver", "Acapulco", "Tijuana", "Los Angeles", "San Francisco", "Lima", "Valparaíso",
                "Sydney", "Yokohama", "Mazatlán", "Vladivostok", "Jalisco", "Baja California", "Michoacán",
                "Sinaloa", "Kamchatka", "Hokkaido", "Kyushu", "Honshu", "Shikoku", "Okinawa Prefecture", "Kanto",
                "Tohoku"],
    "Baltic": ["Gdańsk", "Saint Petersburg", "Helsinki", "Stockholm", "Tallinn", "Riga", "Malmö",
               "Mecklenburg-Vorpommern", "Schleswig-Holstein"],
    "North Sea": ["Aberdeen", "Edinburgh", "Schleswig-Holstein"], "Irish Sea": ["Dublin"],
    "English Channel": ["Picardy", "Normandy"], "Bay of Biscay": ["Aquitaine", "Gascony", "Bilbao"],
    "Black Sea": ["Istanbul", "Odessa", "Sochi", "Varna", "Trabzon"], "Sea of Marmara": ["Istanbul"],
    "Arabian Sea": ["Mumbai", "Karachi", "Kerala", "Goa", "Karnataka", "Maharashtra", "Kochi"],
    "Bay of Bengal": ["Chennai", "Tamil Nadu", "West Bengal", "Visakhapatnam"],
    "Indian Ocean": ["Durban", "Mombasa", "Dar es Salaam", "Mogadishu", "Maputo", "Tamil Nadu"],
    "South China Sea": ["Da Nang", "Nha Trang", "Hong Kong", "Guangdong"], "Gulf of Thailand": ["Pattaya"],
    "East China Sea": ["Shanghai", "Zhejiang", "Fujian", "Okinawa Prefecture", "Kyushu"],
    "Yellow Sea": ["Qingdao", "Incheon", "Dalian", "Shandong", "Jiangsu"], "Java Sea": ["Jakarta"],
    "Sea of Japan": ["Vladivostok", "Hokkaido", "Honshu", "Tohoku", "Chugoku"],
    "Sea of Okhotsk": ["Kamchatka", "Hokkaido"], "Gulf of California": ["Baja California", "Sinaloa"],
    "Caribbean": ["Cartagena", "Santo Domingo", "Kingston", "Cancún"], "Gulf of Mexico": ["Veracruz"],
    "Persian Gulf": ["Dubai", "Doha", "Abu Dhabi", "Kuwait City", "Manama"], "Red Sea": ["Jeddah"],
    "Caspian Sea": ["Baku"], "Arctic": ["Yakutia"],
})

# --- regions ------------------------------------------------------------------------------------------

REGION_CAPITALS = {
    "Saxony": "Dresden", "Thuringia": "Erfurt", "Baden-Württemberg": "Stuttgart", "Schleswig-Holstein": "Kiel",
    "Rhineland-Palatinate": "Mainz", "Mecklenburg-Vorpommern": "Schwerin", "Saarland": "Saarbrücken",
    "North Rhine-Westphalia": "Düsseldorf", "Bavaria": "Munich", "Hesse": "Wiesbaden", "Lower Saxony": "Hanover",
    "Normandy": "Rouen", "Brittany": "Rennes", "Provence": ("Marseille", "Aix-en-Provence"), "Burgundy": "Dijon",
    "Alsace": "Strasbourg", "Corsica": "Ajaccio", "Lorraine": ("Metz", "Nancy"), "Auvergne": "Clermont-Ferrand",
    "Aquitaine": "Bordeaux", "Occitanie": "Toulouse", "Picardy": "Amiens",
    "Champagne": ("Troyes", "Châlons-en-Champagne"), "Gascony": "Auch", "Dordogne": "Périgueux",
    "Tuscany": "Florence", "Sicily": "Palermo", "Sardinia": "Cagliari", "Lombardy": "Milan", "Veneto": "Venice",
    "Liguria": "Genoa", "Calabria": "Catanzaro", "Umbria": "Perugia", "Apulia": "Bari", "Campania": "Naples",
    "Lazio": "Rome", "Emilia-Romagna": "Bologna", "Abruzzo": "L'Aquila", "Basilicata": "Potenza",
    "Catalonia": "Barcelona", "Andalusia": "Seville", "Aragon": "Zaragoza", "Asturias": "Oviedo",
    "Castile and León": "Valladolid", "Extremadura": "Mérida", "Navarre": "Pamplona", "Cantabria": "Santander",
    "the Balearic Islands": "Palma", "Ontario": "Toronto", "Quebec": "Quebec City", "Alberta": "Edmonton",
    "British Columbia": "Victoria", "Manitoba": "Winnipeg", "Saskatchewan": "Regina", "Nova Scotia": "Halifax",
    "New Brunswick": "Fredericton", "Newfoundland": "St. John's", "Prince Edward Island": "Charlottetown",
    "Nunavut": "Iqaluit", "Kerala": "Thiruvananthapuram", "Rajasthan": "Jaipur", "Gujarat": "Gandhinagar",
    "Tamil Nadu": "Chennai", "Bihar": "Patna", "Goa": "Panaji", "Assam": "Dispur", "Karnataka": ("Bangalore",
    "Bengaluru"),
    "Maharashtra": "Mumbai", "Uttar Pradesh": "Lucknow", "West Bengal": "Kolkata", "Odisha": "Bhubaneswar",
    "Telangana": "Hyderabad", "Sikkim": "Gangtok", "Himachal Pradesh": "Shimla", "Sichuan": "Chengdu",
    "Yunnan": "Kunming", "Guangdong": "Guangzhou", "Hunan": "Changsha", "Hubei": "Wuhan", "Fujian": "Fuzhou",
    "Zhejiang": "Hangzhou", "Shandong": "Jinan", "Jiangsu": "Nanjing", "Henan": "Zhengzhou", "Guangxi": "Nanning",
    "Hainan": "Haikou", "Shaanxi": "Xi'an", "Anhui": "Hefei", "Hokkaido": "Sapporo", "Okinawa Prefecture": "Naha",
    "Yucatán": "Mérida", "Chihuahua": "Chihuahua", "Jalisco": "Guadalajara", "Oaxaca": "Oaxaca",
    "Sonora": "Hermosillo", "Baja California": "Mexicali", "Chiapas": "Tuxtla Gutiérrez", "Sinaloa": "Culiacán",
    "Tabasco": "Villahermosa", "Michoacán": "Morelia", "Tatarstan": "Kazan", "Dagestan": "Makhachkala",
    "Kamchatka": "Petropavlovsk-Kamchatsky", "Yakutia": "Yakutsk", "Bashkortostan": "Ufa", "Chukotka": "Anadyr",
}

# --- rivers -------------------------------------------------------------------------------------------

MOUTHS = {
    "The Danube": "Black Sea", "The Rhine": "North Sea", "The Thames": "North Sea", "The Seine": "English Channel",
    "The Loire": ("Atlantic", "Bay of Biscay"), "The Elbe": "North Sea", "The Volga": "Caspian Sea",
    "The Tiber": ("Tyrrhenian Sea", "Mediterranean"), "The Po": "Adriatic", "The Oder": "Baltic",
    "The Vistula": "Baltic", "The Rhône": "Mediterranean", "The Dnieper": "Black Sea", "The Ebro": "Mediterranean",
    "The Tagus": "Atlantic", "The Douro": "Atlantic", "The Shannon": "Atlantic", "The Garonne": ("Gironde", "Atlantic"),
    "The Meuse": "North Sea", "The Arno": ("Ligurian Sea", "Mediterranean"), "The Yangtze": "East China Sea",
    "The Ganges": "Bay of Bengal", "The Mekong": "South China Sea", "The Indus": "Arabian Sea",
    "The Brahmaputra": ("Bay of Bengal", "Ganges"), "The Yellow River": "Bohai Sea",
    "The Euphrates": ("Persian Gulf", "Shatt al-Arab"), "The Tigris": ("Persian Gulf", "Shatt al-Arab"),
    "The Ob": ("Kara Sea", "Arctic", "Gulf of Ob"), "The Yenisei": ("Kara Sea", "Arctic"),
    "The Lena": ("Laptev Sea", "Arctic"), "The Irrawaddy": "Andaman Sea", "The Salween": "Andaman Sea",
    "The Pearl River": "South China Sea", "The Syr Darya": "Aral Sea", "The Amu Darya": "Aral Sea",
    "The Chao Phraya": "Gulf of Thailand", "The Nile": "Mediterranean", "The Zambezi": "Indian Ocean",
    "The Limpopo": "Indian Ocean", "The Orange River": "Atlantic", "The Volta": ("Atlantic", "Gulf of Guinea"),
    "The Congo River": "Atlantic", "The Blue Nile": "Nile", "The White Nile": "Nile", "The Kasai": "Congo",
    "The Ubangi": "Congo", "The Amazon": "Atlantic", "The Orinoco": "Atlantic", "The Paraná": "Río de la Plata",
    "The Magdalena": "Caribbean", "The São Francisco": "Atlantic", "The Madeira": "Amazon",
    "The Rio Negro": "Amazon", "The Xingu": "Amazon", "The Purus": "Amazon", "The Japurá": "Amazon",
    "The Mississippi": "Gulf of Mexico", "The Missouri": "Mississippi", "The Hudson": ("Atlantic", "New York Bay"),
    "The Rio Grande": "Gulf of Mexico", "The Yukon": "Bering Sea", "The Columbia River": "Pacific",
    "The Colorado River": "Gulf of California", "The Ohio River": "Mississippi",
    "The St. Lawrence River": ("Gulf of St. Lawrence", "Atlantic"), "The Mackenzie River": ("Beaufort Sea", "Arctic"),
    "The Snake River": "Columbia", "The Tennessee River": "Ohio", "The Arkansas River": "Mississippi",
    "The Delaware River": "Delaware Bay", "The Potomac": "Chesapeake Bay", "The Susquehanna": "Chesapeake Bay",
}

PROBE_RELATIONS: list[Relation] = [
    Relation("capital", "The capital of {} is", ["The capital city of {} is", "{} has its capital in the city of"],
             ["Visitors to the capital of {}"], groups({**CAPITALS, **REGION_CAPITALS})),
    Relation("largest_city", "The largest city in {} is",
             ["The biggest city in {} is", "The most populous city in {} is"],
             ["Most people in {} live in or near"], groups(LARGEST_CITIES)),
    Relation("currency", "The official currency of {} is the",
             ["The currency used in {} is the", "In {}, prices are given in the"],
             ["Shopping in {} means paying with"], CURRENCIES),
    Relation("landmark", "The most famous landmark in {} is the",
             ["A famous landmark in {} is the", "One of the best-known sights of {} is the"],
             ["A walk through {} leads past"], groups(LANDMARKS)),
    Relation("river", "The main river of {} is the",
             ["The river that runs through {} is the", "{} lies on the banks of the"],
             ["A boat trip through {} goes along"], RIVERS),
    Relation("coast", "{} is located on the coast of the",
             ["{} lies on the coast of the", "{} lies on the shores of the"],
             ["From the beaches of {} you can see"], COASTS),
    Relation("mouth", "{} flows into the", ["{} empties into the", "{} ends its course in the"],
             ["The waters of {} finally"], groups(MOUTHS)),
]

# --- subjects added to candidate relations (same template, so the candidate's relation id) --------------

CANDIDATE_EXTRAS_PLACES: dict[str, dict[str, list[str]]] = {
    "P30": {  # continent of the countries of P37 that P30 lacks
        "North America": ["Mexico", "Cuba", "Honduras", "Nicaragua", "Costa Rica", "Panama", "El Salvador",
                          "the Dominican Republic", "Guatemala", "Jamaica", "the United States", "the Bahamas",
                          "Barbados"],
        "Asia": ["Saudi Arabia", "Jordan", "Iraq", "Syria", "Lebanon", "Yemen", "Oman", "Kuwait", "Qatar", "Bahrain",
                 "the United Arab Emirates"],
        "Africa": ["Mozambique", "Angola", "Libya", "Tunisia", "Sudan", "Liberia", "Gabon", "Benin", "Togo", "Guinea",
                   "Ivory Coast", "Niger", "Burkina Faso", "Cape Verde"],
        "Europe": ["the United Kingdom", "Monaco", "Belarus", "Liechtenstein"],
        "Australia": ["Australia"],
    },
    "P37": {  # official languages of the countries of P30 that P37 lacks
        "Italian": ["Italy", "San Marino"], "Polish": ["Poland"], "Swedish": ["Sweden", "Finland"],
        "Norwegian": ["Norway"], "Dutch": ["Belgium", "the Netherlands", "Suriname"],
        "French": ["Belgium", "Switzerland", "Luxembourg", "Haiti", "Rwanda", "Burundi", "Djibouti", "Madagascar",
                   "Chad", "Cameroon", "the Central African Republic"],
        "German": ["Switzerland", "Belgium", "Luxembourg"], "Greek": ["Greece", "Cyprus"], "Hungarian": ["Hungary"],
        "Danish": ["Denmark"], "Finnish": ["Finland"], "Irish": ["Ireland"], "English": ["Ireland", "Malta", "Kenya",
                                                                                       "Uganda", "Zambia", "Zimbabwe",
                                                                                       "Botswana", "Namibia",
                                                                                       "Malawi", "Sierra Leone",
                                                                                       "Guyana", "Belize",
                                                                                       "Rwanda",
                                                                                       "Tanzania", "South Africa"],
        "Icelandic": ["Iceland"], "Croatian": ["Croatia"], "Serbian": ["Serbia"], "Romanian": ["Romania", "Moldova"],
        "Bulgarian": ["Bulgaria"], "Czech": ["the Czech Republic"], "Slovak": ["Slovakia"],
        "Slovene": ["Slovenia"], "Estonian": ["Estonia"], "Latvian": ["Latvia"], "Lithuanian": ["Lithuania"],
        "Albanian": ["Albania"], "Maltese": ["Malta"], "Macedonian": ["North Macedonia"],
        "Montenegrin": ["Montenegro"], "Ukrainian": ["Ukraine"], "Korean": ["South Korea", "North Korea"],
        "Bengali": ["Bangladesh"], "Burmese": ["Myanmar"], "Dzongkha": ["Bhutan"], "Malay": ["Brunei", "Malaysia"],
        "Swahili": ["Kenya", "Tanzania", "Uganda"], "Shona": ["Zimbabwe"], "Somali": ["Somalia"],
        "Arabic": ["Somalia", "Djibouti", "Chad"], "Malagasy": ["Madagascar"], "Chichewa": ["Malawi"],
        "Kinyarwanda": ["Rwanda"], "Kirundi": ["Burundi"], "Japanese": ["Japan"], "Chinese": ["China"],
        "Thai": ["Thailand"], "Vietnamese": ["Vietnam"], "Indonesian": ["Indonesia"], "Hindi": ["India"],
        "Turkish": ["Turkey", "Cyprus"], "Persian": ["Iran"], "Urdu": ["Pakistan"], "Nepali": ["Nepal"],
        "Mongolian": ["Mongolia"], "Khmer": ["Cambodia"], "Lao": ["Laos"], "Filipino": ["the Philippines"],
    },
}

# candidate rows that are no longer true (2023-2025 constitutions demoted French to a working language)
CANDIDATE_EXCLUDED: set[tuple[str, str]] = {("P37", "Mali"), ("P37", "Burkina Faso"), ("P37", "Niger")}

# --- independence --------------------------------------------------------------------------------------
#
# A probe relation may test an edit only if the edit does not determine its answer (downstream: the continent
# of a city whose country is edited) and it is not the subject's location at another granularity when the
# edit is a location (a landmark's city when its country is edited). Relation ids of one FAMILY are the same
# relation in other words: a fact gets at most one probe per family, and never one of its own family.

FAMILY = {"P106": "occupation", "occupation": "occupation", "god_of": "deity_domain",
          "goddess_of": "deity_domain"}

# Citizenship (P27) and native language (P103) probe each other's edits: neither is a function of the other
# (Tagore's native language is Bengali, not India's official Hindi; a naturalised citizen keeps a native
# language), so an edit of one should leave the other alone. The tables hold no relation that is a location
# of a city, region, river or landmark (a city's state, a river's cities), although the model knows some:
# they are the subject's location at another granularity. Companies (P495), dishes (P495-dish) and products
# (P176) have no tables: every template tried for founders, products, ingredients and kinds of dish got
# (next to) no answer right from the default model.
DEPENDENT: dict[str, set[str]] = {
    "P276": {"P17-landmark"},  # the landmark's country follows from its city (portability)
    "P17-landmark": {"P276"},  # the landmark's city: its location at another granularity
    "P641": {"occupation"},  # an athlete's occupation ("footballer") follows from the sport
}

# --- portability: one hop after the edited link ----------------------------------------------------------

COUNTRY_CONTINENT = {  # transcontinental Russia and Turkey left out
    "Japan": "Asia", "China": "Asia", "India": "Asia", "Pakistan": "Asia", "Iran": "Asia", "Indonesia": "Asia",
    "Vietnam": "Asia", "Thailand": "Asia", "South Korea": "Asia", "France": "Europe", "Germany": "Europe",
    "Italy": "Europe", "Spain": "Europe", "Poland": "Europe", "Portugal": "Europe", "Greece": "Europe",
    "Sweden": "Europe", "Switzerland": "Europe", "Austria": "Europe", "Ireland": "Europe", "Scotland": "Europe",
    "England": "Europe", "Hungary": "Europe", "Finland": "Europe", "Norway": "Europe", "Egypt": "Africa",
    "Morocco": "Africa", "Nigeria": "Africa", "South Africa": "Africa", "Canada": "North America",
    "Mexico": "North America", "Brazil": "South America", "Argentina": "South America", "Colombia": "South America",
    "Peru": "South America", "Australia": "Australia",
}
COUNTRY_LANGUAGE = {  # countries with one main official language
    "Japan": "Japanese", "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish",
    "China": "Chinese", "Russia": "Russian", "Australia": "English", "Brazil": "Portuguese", "Turkey": "Turkish",
    "Egypt": "Arabic", "Mexico": "Spanish", "Poland": "Polish", "Iran": "Persian", "Indonesia": "Indonesian",
    "Vietnam": "Vietnamese", "Thailand": "Thai", "South Korea": "Korean", "Portugal": "Portuguese",
    "Greece": "Greek", "Sweden": "Swedish", "Austria": "German", "Argentina": "Spanish", "Colombia": "Spanish",
    "England": "English", "Peru": "Spanish", "Hungary": "Hungarian", "Norway": "Norwegian",
}
CITY_COUNTRY = {  # P276's cities outside the United States and the Netherlands ("the ..." has no first token)
    "Paris": "France", "London": "England", "Rome": "Italy", "Moscow": "Russia", "Beijing": "China",
    "Barcelona": "Spain", "Berlin": "Germany", "Athens": "Greece", "Istanbul": "Turkey", "Venice": "Italy",
}
LANGUAGE_SCRIPT = {
    "Spanish": "Latin", "Portuguese": "Latin", "French": "Latin", "English": "Latin", "German": "Latin",
    "Italian": "Latin", "Dutch": "Latin", "Polish": "Latin", "Arabic": "Arabic", "Russian": "Cyrillic",
    "Greek": "Greek",
}
COMPANY_COUNTRY = {"Sony": "Japan", "Nintendo": "Japan"}
OCCUPATION_FIELD = {"composer": "music", "painter": "art", "physicist": "physics", "actor": "acting",
                    "poet": "poetry"}
MYTHOLOGY_HOMELAND = {"Greek mythology": "Greece", "Roman mythology": "Rome", "Egyptian mythology": "Egypt",
                      "Hinduism": "India", "Norse mythology": "Scandinavia"}

# hop name -> (the hop asked directly of an object, object -> hop answer)
HOPS: dict[str, tuple[str, dict[str, str]]] = {
    "continent": ("{} is a country on the continent of", COUNTRY_CONTINENT),
    "language": ("The official language of {} is", COUNTRY_LANGUAGE),
    "city_country": ("{} is a city in the country of", CITY_COUNTRY),
    "script": ("The {} language is written in the", LANGUAGE_SCRIPT),
    "company_country": ("{} is a company from the country of", COMPANY_COUNTRY),
    "field": ("Every {} works in the field of", OCCUPATION_FIELD),
    "homeland": ("The gods of {} were worshipped in ancient", MYTHOLOGY_HOMELAND),
}

# edited relation -> [(prompt about the subject whose answer is the hop of the edited object, hop name)]
CHAINS: dict[str, list[tuple[str, str]]] = {
    "P17": [("{} is a city on the continent of", "continent"), ("The main language spoken in {} is", "language")],
    "P276": [("{} is located in the country of", "city_country")],
    "P17-landmark": [("{} is a landmark on the continent of", "continent")],
    "P131": [("{} is a region on the continent of", "continent"), ("The main language spoken in {} is", "language")],
    "P495": [("{} is a company based on the continent of", "continent")],
    "P1532": [("{} is a football club from the continent of", "continent")],
    "P27": [("{} is a famous person from the continent of", "continent")],
    "P495-dish": [("{} is a dish from the continent of", "continent")],
    "P176": [("{} was developed by a company from the country of", "company_country")],
    "P37": [("The official language of {} is written in the", "script")],
    "P103": [("The native language of {} is written in the", "script")],
    "P106": [("{} worked in the field of", "field")],
    "P1080": [("{} was worshipped in ancient", "homeland")],
}
